"""The model adapter's contract, with a stand-in `llava_ov15.model` module (the real model runs
end to end in test_eval_model.py)."""

from __future__ import annotations

import sys
import types

import pytest
from PIL import Image

from llava_ov15.eval.model_adapter import build_messages
from llava_ov15.eval.predictor import Predictor, load_predictor


def test_build_messages_image_first_and_interleaved():
    a, b = Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4), "red")
    m = build_messages([a], "hi")
    assert m == [{"role": "user", "content": [{"type": "image", "image": a},
                                              {"type": "text", "text": "hi"}]}]
    m = build_messages([a, b], "flat", content=["x", 1, "y", 0])
    assert [p.get("text", p.get("image")) for p in m[0]["content"]] == ["x", b, "y", a]


def test_adapter_calls_model_generate(tmp_path, monkeypatch):
    calls = {}

    class Fake:
        def generate(self, messages, *, max_new_tokens, do_sample):
            calls.update(messages=messages, max_new_tokens=max_new_tokens, do_sample=do_sample)
            return "Yes"

    def load_pipeline(path, *, device=None, dtype=None, min_pixels, max_pixels):
        calls.update(path=path, device=device, dtype=dtype, pixels=(min_pixels, max_pixels))
        return Fake()

    fake = types.ModuleType("llava_ov15.model")
    fake.load_pipeline = load_pipeline
    monkeypatch.setitem(sys.modules, "llava_ov15.model", fake)
    pred = load_predictor(str(tmp_path), device="cpu", dtype="float32")
    assert isinstance(pred, Predictor)
    out = pred.predict([Image.new("RGB", (4, 4))], "Q?", max_new_tokens=16)
    assert out == "Yes"
    assert calls["path"] == str(tmp_path) and calls["device"] == "cpu"
    assert calls["dtype"] == "float32" and calls["pixels"] == (200704, 1605632)
    assert calls["max_new_tokens"] == 16 and calls["do_sample"] is False
    assert calls["messages"][0]["content"][-1] == {"type": "text", "text": "Q?"}


def test_adapter_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_predictor(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unknown dummy"):
        load_predictor("dummy:nope")
