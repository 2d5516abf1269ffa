"""`python -m llava_ov15.convert`: a training run's checkpoint directory converts to a complete HF
directory that `infer` and transformers open as is; HF -> mcore -> HF keeps config keys and
tokenizer files; user mistakes are one-line errors.

The conversions run as subprocesses, as a user runs them (megatron's CPU adaptation and process
group must stay out of pytest).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("megatron.core")
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "python"), "OMP_NUM_THREADS": "1"}
# Keys a user's config may hold that the model does not use; they must survive conversion.
EXTRA_TEXT = {"layer_types": ["full_attention", "sliding_attention"], "sliding_window": 4096,
              "use_sliding_window": False, "initializer_range": 0.02,
              "rope_scaling": {"rope_type": "default", "rope_theta": 10000.0}}
EXTRA_VISION = {"initializer_range": 0.02, "num_hidden_layers": 2, "hidden_dropout": 0.0}


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout, cwd=ROOT)


def convert(*args: str) -> subprocess.CompletedProcess:
    return run("-m", "llava_ov15.convert", *args)


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """A tiny HF dir (extra config keys, tokenizer files) -> mcore -> HF."""
    from llava_ov15.model.testing import save_tiny_checkpoint

    d = tmp_path_factory.mktemp("round_trip")
    src = save_tiny_checkpoint(d / "hf", words=["describe", "the", "image"])
    cfg = json.loads((src / "config.json").read_text())
    cfg["text_config"].update(EXTRA_TEXT)
    cfg["vision_config"].update(EXTRA_VISION)
    cfg["initializer_range"] = 0.02
    (src / "config.json").write_text(json.dumps(cfg, indent=2))
    # A published-style generation config with sampling defaults: carried, not regenerated.
    (src / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [315, 313], "do_sample": True, "temperature": 0.7, "top_p": 0.8}))
    ok(convert("hf-to-mcore", "--hf", str(src), "--out", str(d / "mcore")))
    ok(convert("mcore-to-hf", "--mcore", str(d / "mcore"), "--out", str(d / "hf2")))
    return src, d / "mcore", d / "hf2"


def test_hf_to_mcore_to_hf_keeps_unmodelled_config_keys(round_trip):
    src, _, out = round_trip
    a = json.loads((src / "config.json").read_text())
    b = json.loads((out / "config.json").read_text())
    for k, v in a.items():
        if k in ("text_config", "vision_config"):
            assert {kk: b[k].get(kk) for kk in v} == v, k
        else:
            assert b[k] == v, k
    assert {k: b["text_config"][k] for k in EXTRA_TEXT} == EXTRA_TEXT
    assert {k: b["vision_config"][k] for k in EXTRA_VISION} == EXTRA_VISION


def test_hf_to_mcore_to_hf_keeps_tokenizer_files(round_trip):
    src, mcore, out = round_trip
    for name in ("tokenizer.json", "generation_config.json"):
        assert (mcore / name).read_bytes() == (src / name).read_bytes(), name
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    # what the source lacked is generated
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained 2 steps; its checkpoint directory (the one with `latest`) converted."""
    d = tmp_path_factory.mktemp("trained")
    ckpt = d / "ckpt"
    ok(run("-m", "llava_ov15.train", "--config",
           str(ROOT / "configs/tiny/stage1.5_mid_training.yaml"),
           "--set", "train.steps=2", "--set", f"log.dir={d / 'log'}", "--set",
           f"checkpoint.dir={ckpt}", "--set", "log.progress=quiet",
           "--set", "log.tensorboard=false"))
    assert (ckpt / "latest").is_file() and (ckpt / "tokenizer.json").is_file()
    out = d / "hf"
    p = ok(convert("mcore-to-hf", "--mcore", str(ckpt), "--out", str(out)))
    assert p.stdout.strip() == str(out)
    return ckpt, out


def test_convert_accepts_training_checkpoint_root_and_writes_complete_dir(trained):
    ckpt, out = trained
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "preprocessor_config.json"} <= names
    assert (out / "tokenizer.json").read_bytes() == (ckpt / "tokenizer.json").read_bytes()
    latest = ckpt / (ckpt / "latest").read_text().strip()
    src_cfg = json.loads((latest / "llava_config.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["text_config"]["num_hidden_layers"] == src_cfg["text_config"]["num_hidden_layers"]
    gen = json.loads((out / "generation_config.json").read_text())
    tokens = src_cfg["llava_ov15_token_ids"]
    assert gen["eos_token_id"] == [tokens["im_end"], tokens["endoftext"]]


def test_converted_training_checkpoint_answers_in_infer(trained, tmp_path):
    _, out = trained
    img = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype("uint8")).save(img)
    p = run("-m", "llava_ov15.infer", "--model", str(out), "--image", str(img), "--prompt",
            "describe the image", "--max-new-tokens", "4", "--device", "cpu")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "tokens in" in p.stderr and "finish:" in p.stderr


def test_converted_training_checkpoint_opens_in_eval(trained, tmp_path):
    from llava_ov15.eval.testing import write_synthetic_benchmarks

    _, out = trained
    write_synthetic_benchmarks(tmp_path / "bench", n=2)
    p = run("-m", "llava_ov15.eval", "--model", str(out), "--benchmarks", "pope", "--data-dir",
            str(tmp_path / "bench"), "--output", str(tmp_path / "eval"), "--limit", "2",
            "--max-new-tokens", "4", "--device", "cpu", "--no-progress")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "pope" in json.loads((tmp_path / "eval" / "results.json").read_text())["benchmarks"]


def test_converted_dir_opens_in_transformers_and_processor(trained):
    from tokenizers import Tokenizer
    from transformers import AutoImageProcessor, AutoTokenizer, GenerationConfig

    from llava_ov15.model.processor import Processor, preprocess_images, render_chat

    _, out = trained
    tok = AutoTokenizer.from_pretrained(out)
    ref = Tokenizer.from_file(str(out / "tokenizer.json"))
    text = "describe the image<|im_end|>"
    assert tok(text)["input_ids"] == ref.encode(text, add_special_tokens=False).ids
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]},
            {"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) \
        == render_chat(msgs, add_generation_prompt=True)
    gen = GenerationConfig.from_pretrained(out)
    assert gen.eos_token_id == [tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id]
    im = Image.fromarray((np.random.default_rng(1).random((90, 60, 3)) * 255).astype("uint8"))
    hf = AutoImageProcessor.from_pretrained(out)(images=[im], return_tensors="np")
    pv, grid = preprocess_images([im])
    assert grid.tolist() == hf["image_grid_thw"].tolist()
    assert np.abs(pv.numpy() - hf["pixel_values"]).max() <= 1e-5
    chat = [{"role": "user", "content": "describe the image"}]
    enc = Processor.from_pretrained(out)(chat)
    assert enc["input_ids"] == tok(render_chat(chat, add_generation_prompt=True))["input_ids"]


def one_line_error(p: subprocess.CompletedProcess, *needles: str) -> str:
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_convert_missing_folder_is_one_line_error(tmp_path):
    one_line_error(convert("mcore-to-hf", "--mcore", str(tmp_path / "nope"), "--out",
                           str(tmp_path / "o")), "no such directory")
    one_line_error(convert("hf-to-mcore", "--hf", str(tmp_path / "nope"), "--out",
                           str(tmp_path / "o")), "no such directory")
    assert not (tmp_path / "o").exists()


def test_convert_not_a_checkpoint_is_one_line_error(tmp_path):
    one_line_error(convert("mcore-to-hf", "--mcore", str(tmp_path), "--out",
                           str(tmp_path / "o")), "not a checkpoint")
    (tmp_path / "iter_0000004").mkdir()  # a run dir whose `latest` is gone
    one_line_error(convert("mcore-to-hf", "--mcore", str(tmp_path), "--out",
                           str(tmp_path / "o")), "iter_0000004", "latest")
    (tmp_path / "latest").write_text("iter_0000009\n")
    one_line_error(convert("mcore-to-hf", "--mcore", str(tmp_path), "--out",
                           str(tmp_path / "o")), "iter_0000009")
    one_line_error(convert("hf-to-mcore", "--hf", str(tmp_path), "--out",
                           str(tmp_path / "o")), "no config.json")


def test_convert_without_tokenizer_is_one_line_error(round_trip, tmp_path):
    from llava_ov15.data.tokenizer import qwen_tokenizer_json

    _, mcore, _ = round_trip
    run_dir = tmp_path / "run"
    shutil.copytree(mcore, run_dir / "iter_0000002")  # a training layout, tokenizer not saved
    (run_dir / "iter_0000002" / "tokenizer.json").unlink()
    (run_dir / "latest").write_text("iter_0000002\n")
    out = tmp_path / "o"
    one_line_error(convert("mcore-to-hf", "--mcore", str(run_dir), "--out", str(out)),
                   "no tokenizer.json", "--tokenizer")
    one_line_error(convert("mcore-to-hf", "--mcore", str(run_dir), "--out", str(out),
                           "--tokenizer", str(tmp_path / "missing.json")), "missing.json")
    # a tokenizer whose special tokens sit elsewhere than the model's (here: Qwen's real ids)
    one_line_error(convert("mcore-to-hf", "--mcore", str(run_dir), "--out", str(out),
                           "--tokenizer", str(qwen_tokenizer_json())), "<|im_end|>")
    assert not out.exists()  # nothing half-written


def test_qwen_bpe_tokenizer_dir_loads_as_qwen2_tokenizer(tmp_path):
    """The published ids and the real BPE tokenizer: AutoTokenizer gets Qwen2Tokenizer and the
    Qwen2-VL chat template, with the same ids as the tokenizer.json itself."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from llava_ov15.data.tokenizer import qwen_tokenizer_json
    from llava_ov15.model.config import LlavaOV15Config
    from llava_ov15.model.hf_files import check_tokenizer, write_companions
    from llava_ov15.model.processor import render_chat

    cfg = LlavaOV15Config()
    src = qwen_tokenizer_json()
    check_tokenizer(src, cfg)
    write_companions(tmp_path, src, cfg)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert type(tok).__name__ == "Qwen2Tokenizer"
    text = "Describe this photo, please: 北京 <|im_end|>"
    assert tok(text)["input_ids"] == Tokenizer.from_file(str(src)).encode(
        text, add_special_tokens=False).ids
    assert (tok.eos_token_id, tok.pad_token_id) == (151645, 151643)
    msgs = [{"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image"},
                                         {"type": "image"}, {"type": "text", "text": "B"}]}]
    for vid in (False, True):
        assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                       add_vision_id=vid) \
            == render_chat(msgs, add_generation_prompt=True, add_vision_id=vid)


def test_tokenizer_is_found_in_checkpoint_then_its_run_directory(tmp_path):
    from llava_ov15.convert import ConvertError, resolve_mcore, resolve_tokenizer

    it = tmp_path / "run" / "iter_0000007"
    it.mkdir(parents=True)
    (it / "llava_config.json").write_text("{}")
    (it / "metadata.json").write_text("{}")
    (tmp_path / "run" / "latest").write_text("iter_0000007\n")
    (tmp_path / "run" / "tokenizer.json").write_text("{}")
    assert resolve_mcore(tmp_path / "run") == it
    assert resolve_mcore(it) == it
    assert resolve_tokenizer(it, None) == tmp_path / "run" / "tokenizer.json"
    (it / "tokenizer.json").write_text("{}")
    assert resolve_tokenizer(it, None) == it / "tokenizer.json"
    other = tmp_path / "other"
    other.mkdir()
    (other / "tokenizer.json").write_text("{}")
    assert resolve_tokenizer(it, other) == other / "tokenizer.json"
    assert resolve_tokenizer(it, other / "tokenizer.json") == other / "tokenizer.json"
    # a converted (non-iter) directory does not borrow a tokenizer from the folder above it
    conv = tmp_path / "run" / "converted"
    conv.mkdir()
    with pytest.raises(ConvertError, match="no tokenizer.json"):
        resolve_tokenizer(conv, None)
