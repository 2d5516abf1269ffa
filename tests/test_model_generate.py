"""Generation: KV cache vs recompute, batched left padding vs one-by-one, sampling, stops, CLI."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from llava_ov15.model.generate import GenerationConfig, generate, sample_next
from llava_ov15.model.processor import preprocess_images
from llava_ov15.model.testing import tiny_model, word_tokenizer

NO_EOS = dict(eos_token_ids=[])


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3, std=0.15)


def _prompts(m):
    img = m.config.tokens.image
    g = torch.tensor([[1, 4, 6], [1, 2, 2]])
    pv = torch.randn(int(g.prod(-1).sum()), 588, generator=torch.Generator().manual_seed(0))
    prompts = [[1, 2] + [img] * 6 + [3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
               [20, img, 21]]
    return prompts, pv, g


def test_cache_equals_no_cache(model):
    prompts, pv, g = _prompts(model)
    cfg = GenerationConfig(max_new_tokens=12, **NO_EOS)
    a = generate(model, prompts, pv, g, cfg, keep_logits=True)
    b = generate(model, prompts, pv, g, GenerationConfig(max_new_tokens=12, use_cache=False,
                                                         **NO_EOS), keep_logits=True)
    assert a.sequences == b.sequences
    assert all(len(s) == 12 for s in a.sequences)
    for x, y in zip(a.logits, b.logits, strict=True):
        assert (x - y).abs().max() <= 1e-4


def test_batched_left_padded_equals_one_by_one(model):
    prompts, pv, g = _prompts(model)
    cfg = GenerationConfig(max_new_tokens=10, **NO_EOS)
    batched = generate(model, prompts, pv, g, cfg, keep_logits=True)
    pvs = pv.split(g.prod(-1).tolist())
    singles = [generate(model, [prompts[0]], pvs[0], g[:1], cfg, keep_logits=True),
               generate(model, [prompts[1]], config=cfg, keep_logits=True),
               generate(model, [prompts[2]], pvs[1], g[1:], cfg, keep_logits=True)]
    for i, s in enumerate(singles):
        assert batched.sequences[i] == s.sequences[0]
        for x, y in zip(batched.logits, s.logits, strict=True):
            assert (x[i] - y[0]).abs().max() <= 1e-4


def test_eos_and_stop_strings_and_streaming(model):
    prompts, pv, g = _prompts(model)
    free = generate(model, prompts[1:2], config=GenerationConfig(max_new_tokens=6, **NO_EOS))
    seq = free.sequences[0]
    # eos = the 4th greedy token: generation stops before it, reason "eos"
    out = generate(model, prompts[1:2], config=GenerationConfig(max_new_tokens=6,
                                                                eos_token_ids=[seq[3]]))
    assert out.sequences[0] == seq[:seq.index(seq[3])] and out.finish_reasons == ["eos"]
    tok = word_tokenizer(model.config)

    def decode(ids):
        return tok.decode(ids)

    stop = decode(seq[2:3])
    got = []
    out = generate(model, prompts[1:2], config=GenerationConfig(max_new_tokens=6, **NO_EOS,
                                                                stop_strings=[stop]),
                   decode=decode, stream=lambda r, t: got.append((r, t)))
    assert out.finish_reasons == ["stop"]
    assert out.sequences[0] == seq[:seq.index(seq[2]) + 1]
    assert got == [(0, t) for t in out.sequences[0]]
    assert stop not in out.texts[0]


def test_sampling_seeded_and_filters(model):
    prompts, pv, g = _prompts(model)
    cfg = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.9,
                           top_k=50, seed=7, **NO_EOS)
    a = generate(model, prompts, pv, g, cfg)
    b = generate(model, prompts, pv, g, cfg)
    assert a.sequences == b.sequences
    logits = torch.tensor([[0.0, 5.0, 4.9, -1.0, 2.0]])
    gen = torch.Generator().manual_seed(0)
    k1 = GenerationConfig(do_sample=True, top_k=1)
    assert all(sample_next(logits, k1, gen).item() == 1 for _ in range(20))
    p = GenerationConfig(do_sample=True, top_p=0.6)  # mass of token 1 alone < 0.6 -> {1, 2}
    seen = {sample_next(logits, p, gen).item() for _ in range(200)}
    assert seen == {1, 2}
    assert sample_next(logits, GenerationConfig(), gen).item() == 1


def test_infer_cli_streams_answer(tmp_path, model):
    model.save_pretrained(tmp_path / "m")
    tok = word_tokenizer(model.config, ["what", "is", "this"])
    tok.save(str(tmp_path / "m" / "tokenizer.json"))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (80, 40, 3), dtype=np.uint8)).save(tmp_path / "b.jpg")
    cmd = [sys.executable, "-m", "llava_ov15.infer", "--model", str(tmp_path / "m"),
           "--image", str(tmp_path / "a.png"), "--image", str(tmp_path / "b.jpg"),
           "--prompt", "what is this", "--max-new-tokens", "5"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    words = p.stdout.split()
    assert 1 <= len(words) <= 5
    assert "finish:" in p.stderr
    # same answer through the Python API
    from llava_ov15.model.processor import Processor

    proc = Processor(word_tokenizer(model.config, ["what", "is", "this"]))
    ims = [Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.jpg")]
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                         {"type": "text", "text": "what is this"}]}]
    enc = proc(msgs, ims)
    pv, g = preprocess_images(ims)
    assert torch.equal(pv, enc["pixel_values"])
    out = generate(model, [enc["input_ids"]], pv, g, GenerationConfig(max_new_tokens=5),
                   decode=proc.decode)
    assert out.texts[0].split() == words


def test_never_generates_vision_placeholders():
    """A random model may prefer <|image_pad|>; it has no pixels and must not be emitted."""
    m = tiny_model(seed=3, std=0.15)
    tok = m.config.tokens
    old = m.lm_head

    class Biased(torch.nn.Linear):
        def forward(self, x):
            out = super().forward(x)
            out[..., tok.image] += 1e3
            out[..., tok.video] += 1e3
            return out

    m.lm_head = Biased(old.in_features, old.out_features, bias=False)
    m.lm_head.weight = old.weight
    for use_cache in (True, False):
        out = generate(m, [[1, 2, 3]], config=GenerationConfig(max_new_tokens=4,
                                                               use_cache=use_cache, **NO_EOS))
        assert len(out.sequences[0]) == 4
        assert not {tok.image, tok.video} & set(out.sequences[0])


def test_stream_return_finishes_row_and_sampler_replaces_sampling(model):
    """A batch row stops where its stream callback says so; the others run on unchanged."""
    prompts, pv, g = _prompts(model)
    cfg = GenerationConfig(max_new_tokens=6, **NO_EOS)
    full = generate(model, prompts, pv, g, cfg)
    seen: list[tuple[int, int]] = []

    def stream(row, token):
        seen.append((row, token))
        return "cancelled" if row == 1 and len([r for r, _ in seen if r == 1]) == 2 else None

    out = generate(model, prompts, pv, g, cfg, stream=stream)
    assert out.finish_reasons == ["length", "cancelled", "length"]
    assert out.sequences[1] == full.sequences[1][:2]
    assert out.sequences[0] == full.sequences[0] and out.sequences[2] == full.sequences[2]
    calls = []

    def lowest(logits):  # a deliberately different rule: always the lowest-scoring token
        calls.append(logits.shape)
        return logits.masked_fill(logits.isinf(), float("inf")).argmin(-1)

    low = generate(model, prompts[1:2], config=cfg, sampler=lowest, keep_logits=True)
    assert len(calls) == 6 and calls[0] == (1, model.config.text.vocab_size)
    assert low.sequences[0] == [int(x[0].argmin()) for x in low.logits]
