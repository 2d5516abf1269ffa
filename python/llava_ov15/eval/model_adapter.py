"""Adapter from a checkpoint directory to the :class:`~llava_ov15.eval.predictor.Predictor`
interface. ``llava_ov15.model`` is imported only here, lazily, when a real model is requested.

It uses ``llava_ov15.model.load_pipeline(path, *, device, dtype, min_pixels, max_pixels)`` (the
path ``python -m llava_ov15.infer`` uses too), whose result has
``generate(messages, *, max_new_tokens, do_sample=False) -> str``: ``messages`` is a
Qwen2.5-VL-style chat list ``[{"role": "user", "content": [{"type": "image", "image": PIL},
{"type": "text", "text": str}, ...]}]`` (default system prompt "You are a helpful assistant."
added by the chat template), the answer is only the newly generated text with special tokens
skipped, stopping at ``<|im_end|>`` / ``<|endoftext|>``. Eval image pixels: min 200,704 / max
1,605,632, as in lmms-eval's llava_onevision1_5.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

EVAL_MIN_PIXELS = 256 * 28 * 28
EVAL_MAX_PIXELS = 1605632


def build_messages(images: Sequence[Image.Image], prompt: str,
                   content: Sequence[str | int] | None = None) -> list[dict]:
    """lmms-eval's message layout: images first then the text, or the interleaved ``content``."""
    if content is None:
        parts = [{"type": "image", "image": im} for im in images]
        parts.append({"type": "text", "text": prompt})
    else:
        parts = [{"type": "image", "image": images[c]} if isinstance(c, int)
                 else {"type": "text", "text": c} for c in content]
    return [{"role": "user", "content": parts}]


class ModelPredictor:
    def __init__(self, path: str, device: str | None = None, dtype: str | None = None):
        p = Path(path)
        if not p.is_dir():
            raise FileNotFoundError(f"--model {path}: not a directory (or use dummy:echo)")
        try:
            mod = importlib.import_module("llava_ov15.model")
        except ImportError as e:
            raise RuntimeError(f"llava_ov15.model is not available ({e})") from e
        self.path = p
        self.model = mod.load_pipeline(str(p), device=device, dtype=dtype,
                                       min_pixels=EVAL_MIN_PIXELS, max_pixels=EVAL_MAX_PIXELS)

    def info(self) -> dict:
        out = {"class": "ModelPredictor", "path": str(self.path),
               "min_pixels": EVAL_MIN_PIXELS, "max_pixels": EVAL_MAX_PIXELS}
        for k in ("device", "dtype"):  # as loaded
            if hasattr(self.model, k):
                out[k] = str(getattr(self.model, k)).removeprefix("torch.")
        return out

    def predict(self, images: Sequence[Image.Image], prompt: str, *, max_new_tokens: int,
                content: Sequence[str | int] | None = None) -> str:
        messages = build_messages(images, prompt, content)
        return self.model.generate(messages, max_new_tokens=max_new_tokens, do_sample=False)


def load_model_predictor(path: str, **kwargs) -> ModelPredictor:
    return ModelPredictor(path, **kwargs)
