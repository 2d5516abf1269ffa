"""transformers integration (`import llava_ov15.hf`): Auto classes, the usual snippet, round trips.

Versions covered: transformers 5.23.0 (the version pinned in requirements/dev.txt; `llava_ov15.hf`
refuses transformers < 5 at import). `test_pinned_transformers_is_installed` fails when the
environment drifts from the pin, so the statement stays true.

All checkpoints are tiny random models written by the tests in the published layout (config.json
with `auto_map`, safetensors with the published key names, tokenizer + processor files).
"""

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import llava_ov15.hf as ovhf
import llava_ov15.infer as infer
from llava_ov15.model import LlavaOV15Config
from llava_ov15.model.checkpoint import INDEX_NAME, load_pretrained
from llava_ov15.model.hf_files import write_companions
from llava_ov15.model.testing import save_tiny_checkpoint, tiny_model, word_tokenizer

AutoConfig, AutoProcessor = transformers.AutoConfig, transformers.AutoProcessor
AutoModelForCausalLM = transformers.AutoModelForCausalLM
_STREAMER = infer.TextStreamer
WORDS = ["what", "is", "this", "describe", "it"]
PUBLISHED_TEXT_EXTRAS = {"use_sliding_window": False, "sliding_window": None,
                         "max_window_layers": 2, "rope_scaling": None, "attention_dropout": 0.0}


def _publish(directory: Path) -> dict:
    """Rewrite config.json as the published one looks: auto_map, torch_dtype, text extras."""
    hf = json.loads((directory / "config.json").read_text())
    hf["auto_map"] = dict(ovhf.PUBLISHED_AUTO_MAP)
    hf["torch_dtype"] = "float32"
    hf["text_config"].update(PUBLISHED_TEXT_EXTRAS)
    hf["vision_config"]["initializer_range"] = 0.02
    (directory / "config.json").write_text(json.dumps(hf, indent=2))
    return hf


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A complete published-layout directory (weights, config, tokenizer, processor files)."""
    d = save_tiny_checkpoint(tmp_path_factory.mktemp("hf") / "m", words=WORDS)
    tok = d.parent / "tokenizer.json"
    shutil.copyfile(d / "tokenizer.json", tok)  # a bare tokenizer: companions are generated
    write_companions(d, tok, LlavaOV15Config.from_pretrained(d))
    _publish(d)
    return d


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    rng = np.random.default_rng(5)
    p = tmp_path_factory.mktemp("img") / "a.png"
    Image.fromarray(rng.integers(0, 255, (44, 70, 3), dtype=np.uint8)).save(p)
    return p


def test_pinned_transformers_is_installed():
    pins = Path(__file__).parents[1].joinpath("requirements", "dev.txt").read_text()
    assert re.search(r"^transformers==(\S+)", pins, re.M)[1] == transformers.__version__


def test_auto_classes_return_ours_without_trust_remote_code(model_dir):
    assert type(AutoConfig.from_pretrained(model_dir)) is ovhf.LlavaOV15HFConfig
    for auto in (AutoModelForCausalLM, transformers.AutoModelForImageTextToText):
        assert type(auto.from_pretrained(model_dir)) is ovhf.LlavaOV15ForConditionalGenerationHF
    proc = AutoProcessor.from_pretrained(model_dir)
    assert type(proc) is ovhf.LlavaOV15Processor
    # preprocessor_config.json names transformers' Qwen2VLImageProcessor (published layout);
    # the routing still hands out the project's image pipeline
    assert json.loads((model_dir / "preprocessor_config.json").read_text())[
        "image_processor_type"] == "Qwen2VLImageProcessor"
    assert type(transformers.AutoImageProcessor.from_pretrained(model_dir)) is \
        ovhf.LlavaOV15ImageProcessor
    # trust_remote_code=True with no remote code files present: our registered classes win
    m = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True)
    assert type(m) is ovhf.LlavaOV15ForConditionalGenerationHF
    assert type(AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)) is \
        ovhf.LlavaOV15Processor


def _infer_tokens(model_dir, image, prompt, monkeypatch, capsys, max_new=12):
    """Run `python -m llava_ov15.infer` in-process; the streamed token ids and stdout."""
    seen = []

    class Recorder(_STREAMER):
        def __init__(self, decode):  # the default stream was bound before capsys took over
            super().__init__(decode, out=sys.stdout)

        def __call__(self, row, token):
            seen.append(token)
            super().__call__(row, token)

    monkeypatch.setattr(infer, "TextStreamer", Recorder)
    args = ["--model", str(model_dir), "--prompt", prompt, "--max-new-tokens", str(max_new),
            "--device", "cpu"]
    if image is not None:
        args += ["--image", str(image)]
    capsys.readouterr()
    assert infer.main(args) == 0
    return seen, capsys.readouterr().out.strip()


def _until_eos(row: list[int], eos: set[int]) -> list[int]:
    out = []
    for t in row:
        if t in eos:
            break
        out.append(t)
    return out


def test_snippet_greedy_tokens_equal_infer_cli(model_dir, image_file, monkeypatch, capsys):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    image = Image.open(image_file)
    prompts = [([{"type": "image"}, {"type": "text", "text": "describe it"}], image),
               ([{"type": "text", "text": "what is this"}], None)]
    texts = [processor.apply_chat_template([{"role": "user", "content": c}],
                                           add_generation_prompt=True, tokenize=False)
             for c, _ in prompts]
    # one left-padded batch: an image prompt and a (shorter) text-only prompt
    inputs = processor(text=texts, images=[im for _, im in prompts if im is not None],
                       return_tensors="pt")
    assert inputs["attention_mask"][1, 0] == 0  # the text-only row is padded on the left
    out = model.generate(**inputs, max_new_tokens=12)
    new = out[:, inputs["input_ids"].shape[1]:]
    answers = processor.batch_decode(new, skip_special_tokens=True)
    eos = set(model.generation_config.eos_token_id)
    for row, (prompt, path) in enumerate([("describe it", image_file), ("what is this", None)]):
        cli_tokens, cli_text = _infer_tokens(model_dir, path, prompt, monkeypatch, capsys)
        assert _until_eos(new[row].tolist(), eos) == cli_tokens and cli_tokens
        assert answers[row].strip() == cli_text
    # generated vision placeholders are impossible, as in the project's generator
    assert not set(new.flatten().tolist()) & {model.config.image_token_id,
                                              model.config.video_token_id}


def test_logits_and_loss_equal_the_project_model(model_dir, image_file):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ours = load_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what"}]}],
        add_generation_prompt=True, tokenize=False)
    enc = processor(text=text, images=Image.open(image_file), return_tensors="pt")
    ids, pv, grid = enc["input_ids"], enc["pixel_values"], enc["image_grid_thw"]
    with torch.no_grad():
        got = model(input_ids=ids, pixel_values=pv, image_grid_thw=grid, labels=ids,
                    use_cache=False)
        want = ours(ids, pv, grid, labels=ids)
        assert torch.equal(got.logits, want.logits) and torch.equal(got.loss, want.loss)
        # the cached path (what generate's prefill runs) gives the same logits
        cached = model(**enc, use_cache=True)
        assert cached.past_key_values.get_seq_length() == ids.shape[1]
        torch.testing.assert_close(cached.logits, want.logits, rtol=1e-5, atol=1e-5)
    # wrapping the project's model in memory shares its weights
    wrapped = ovhf.LlavaOV15ForConditionalGenerationHF.from_core(ours)
    assert wrapped.lm_head.weight is ours.lm_head.weight
    with torch.no_grad():
        assert torch.equal(wrapped(**enc, use_cache=False).logits, want.logits)
        # a child replaced on the HF model (resizing, adapters) is the one the forward runs
        wrapped.lm_head = torch.nn.Linear(ours.lm_head.in_features, 5, bias=False)
        assert wrapped(**enc, use_cache=False).logits.shape[-1] == 5
    # cache-free generation equals cached generation
    a = model.generate(**enc, max_new_tokens=6, use_cache=True)
    b = model.generate(**enc, max_new_tokens=6, use_cache=False)
    assert torch.equal(a, b)


def test_save_pretrained_round_trip_keeps_published_files(model_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(model_dir, src)
    # the published repos ship remote code beside the weights; a re-save must keep it
    (src / "configuration_llavaonevision1_5.py").write_text("# remote code stand-in\n")
    model = AutoModelForCausalLM.from_pretrained(src)
    out = tmp_path / "out"
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(src).save_pretrained(out)

    before = json.loads((src / "config.json").read_text())
    after = json.loads((out / "config.json").read_text())
    assert after["auto_map"] == before["auto_map"] and after["model_type"] == "llavaonevision1_5"
    for key in ("vision_config", "text_config"):  # every published field, same value
        assert {k: after[key].get(k, "MISSING") for k in before[key]} == before[key], key
    for key in ("architectures", "image_token_id", "video_token_id", "torch_dtype"):
        assert after[key] == before[key], key
    assert (out / "configuration_llavaonevision1_5.py").is_file()
    assert LlavaOV15Config.from_pretrained(out) == LlavaOV15Config.from_pretrained(src)
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "Qwen2VLImageProcessor"
    assert (pre["patch_size"], pre["merge_size"], pre["temporal_patch_size"]) == (14, 2, 1)
    # what the published snippet's processor reads from it (transformers' Qwen2-VL image
    # processor, PIL backend) gives the project's pixels bit for bit
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    rng = np.random.default_rng(1)
    ims = [Image.fromarray(rng.integers(0, 255, (h, 70, 3), dtype=np.uint8)) for h in (44, 90)]
    theirs = Qwen2VLImageProcessorPil.from_pretrained(out)(ims, return_tensors="pt")
    mine = ovhf.LlavaOV15ImageProcessor.from_pretrained(out)(ims, return_tensors="pt")
    assert torch.equal(theirs["image_grid_thw"], mine["image_grid_thw"])
    assert torch.equal(theirs["pixel_values"], mine["pixel_values"])

    with safe_open(out / "model.safetensors", "pt") as f, \
            safe_open(src / "model.safetensors", "pt") as g:
        assert set(f.keys()) == set(g.keys())  # the published key names
        for k in f.keys():
            assert torch.equal(f.get_tensor(k), g.get_tensor(k)), k
    again = AutoModelForCausalLM.from_pretrained(out)
    assert type(again) is ovhf.LlavaOV15ForConditionalGenerationHF
    assert type(AutoProcessor.from_pretrained(out)) is ovhf.LlavaOV15Processor
    # and the project's own loader reads what transformers wrote
    ours = load_pretrained(out)
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, again(input_ids=ids, use_cache=False).logits)


def test_published_sharded_bf16_dir_loads(tmp_path):
    """The layout the hub repos have: sharded bf16 safetensors + index, remote-code config."""
    m = tiny_model(seed=7)
    d = tmp_path / "pub"
    m.save_pretrained(d)
    word_tokenizer(m.config, WORDS).save(str(d / "tokenizer.json"))
    (d / "model.safetensors").unlink()
    hf = _publish(d)
    hf["torch_dtype"] = "bfloat16"
    hf["vocab_size"] = 152064  # the published top-level value differs from the text vocab
    (d / "config.json").write_text(json.dumps(hf))
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in m.state_dict().items()}
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[::2],
              "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, d / name, metadata={"format": "pt"})
    (d / INDEX_NAME).write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}))

    model = AutoModelForCausalLM.from_pretrained(d, dtype="auto")
    assert model.lm_head.weight.dtype == torch.bfloat16
    loaded = model.state_dict()
    assert set(loaded) == set(sd)
    for k, v in sd.items():
        assert torch.equal(loaded[k], v), k
    assert model.config.to_ours() == LlavaOV15Config.from_pretrained(d)
    ids = torch.arange(5, 30)[None]
    with torch.no_grad():
        want = load_pretrained(d)(ids).logits
        assert torch.equal(model(input_ids=ids, use_cache=False).logits, want)
    # no tokenizer_config/preprocessor files: the processor uses the defaults + chat template
    proc = AutoProcessor.from_pretrained(d)
    assert type(proc) is ovhf.LlavaOV15Processor
    assert proc.image_processor.min_pixels == 3136
    big = transformers.AutoImageProcessor.from_pretrained(d, min_pixels=200_704)
    assert big(Image.new("RGB", (30, 30)))["image_grid_thw"].prod() * 14**2 >= 200_704
    text = proc.apply_chat_template([{"role": "user", "content": "what is this"}],
                                    add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n") and "You are a helpful assistant." in text


def test_wrong_model_type_and_bad_settings_are_clear_errors(model_dir, tmp_path):
    other = tmp_path / "qwen"
    shutil.copytree(model_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "qwen2_vl"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type 'qwen2_vl'.*llavaonevision1_5"):
        ovhf.LlavaOV15ForConditionalGenerationHF.from_pretrained(other)
    with pytest.raises(ValueError, match="model_type 'qwen2_vl'"):
        ovhf.LlavaOV15Processor.from_pretrained(other)
    assert not ovhf.is_ours(other) and ovhf.is_ours(model_dir)

    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    with pytest.raises(ValueError, match="image_mean"):
        ovhf.LlavaOV15ImageProcessor(**{**pre, "image_mean": [0.5, 0.5, 0.5]})
    proc = AutoProcessor.from_pretrained(model_dir)
    with pytest.raises(ValueError, match="1 image placeholders but 2 images"):
        proc(text="<|vision_start|><|image_pad|><|vision_end|>", images=[
            Image.new("RGB", (30, 30)), Image.new("RGB", (30, 30))])
    with pytest.raises(ValueError, match="videos are not supported"):
        proc(text="x", videos=[[Image.new("RGB", (30, 30))]])


def test_tokenizing_chat_template_and_checkpointed_training_step(model_dir, image_file):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    image = Image.open(image_file).convert("RGB")
    msgs = [{"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": "what is this"}]}]
    enc = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                        return_dict=True, return_tensors="pt")
    text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    ref = processor(text=text, images=[image], return_tensors="pt")
    assert set(enc) >= set(ref) and all(torch.equal(enc[k], ref[k]) for k in ref)

    model.train()
    plain = model(**ref, labels=ref["input_ids"]).loss
    model.activation_checkpointing_enable()
    assert model.model.gradient_checkpointing and model.visual.gradient_checkpointing
    loss = model(**ref, labels=ref["input_ids"]).loss
    loss.backward()
    assert torch.equal(loss, plain)
    assert model.visual.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
