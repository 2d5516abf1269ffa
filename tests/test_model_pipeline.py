"""Pipeline: checkpoint directory -> answers, the path shared by the infer CLI and eval."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from llava_ov15.model import load_pipeline
from llava_ov15.model.generate import GenerationConfig, generate
from llava_ov15.model.pipeline import Pipeline, resolve_dtype
from llava_ov15.model.processor import EVAL_MIN_PIXELS, Processor
from llava_ov15.model.testing import save_tiny_checkpoint, tiny_model, word_tokenizer

WORDS = ["what", "is", "this", "Yes", "No"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "m", words=WORDS)


def _image(seed, size=(60, 40)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def test_generate_equals_model_level_path(ckpt):
    pipe = load_pipeline(ckpt, device="cpu", min_pixels=EVAL_MIN_PIXELS)
    a, b = _image(0), _image(1, (30, 70))
    msgs = [{"role": "user", "content": [{"type": "image", "image": a},
                                         {"type": "image", "image": b},
                                         {"type": "text", "text": "what is this"}]}]
    got = pipe.generate(msgs, max_new_tokens=6)

    model = tiny_model(seed=3, std=0.15)
    proc = Processor(word_tokenizer(model.config, WORDS), min_pixels=EVAL_MIN_PIXELS)
    enc = proc(msgs, [a, b])
    assert enc["image_grid_thw"].prod(-1).sum() >= 2 * EVAL_MIN_PIXELS // 14**2
    out = generate(model, [enc["input_ids"]], enc["pixel_values"], enc["image_grid_thw"],
                   GenerationConfig(max_new_tokens=6), decode=proc.decode)
    assert got == out.texts[0] and got.strip()
    # image paths / arrays work too; a system message replaces the default one
    got2 = pipe.generate([{"role": "user", "content": [
        {"type": "image", "image": np.asarray(a)}, {"type": "image", "image": b},
        {"type": "text", "text": "what is this"}]}], max_new_tokens=6)
    assert got2 == got
    sys_msgs = [{"role": "system", "content": "You are a cat."}, *msgs]
    assert "You are a cat." in pipe.encode(sys_msgs)["text"]


def test_dtype_device_generation_config_and_errors(ckpt, tmp_path):
    pipe = load_pipeline(ckpt, dtype="bf16", device="cpu")
    assert pipe.dtype == torch.bfloat16 and pipe.device.type == "cpu"
    assert pipe.generate([{"role": "user", "content": "what is this"}], max_new_tokens=3)
    assert load_pipeline(ckpt, dtype="auto").dtype == torch.float32
    assert resolve_dtype("float16") == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8")

    (ckpt / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 8]}))
    try:
        p = load_pipeline(ckpt, device="cpu")
        tok = p.model.config.tokens
        assert p.eos_token_ids == sorted({7, 8, tok.im_end, tok.endoftext})
        assert p.generation_config(max_new_tokens=2).eos_token_ids == p.eos_token_ids
    finally:
        (ckpt / "generation_config.json").unlink()

    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_pipeline(tmp_path)
    model = tiny_model()
    other = tiny_model(vocab_size=400)  # specials elsewhere
    with pytest.raises(ValueError, match="special token ids"):
        Pipeline(model, Processor(word_tokenizer(other.config)))
    with pytest.raises(ValueError, match="only"):
        pipe.encode([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}])
