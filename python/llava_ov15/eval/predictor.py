"""The interface between the runner and a model, and how ``--model`` picks one.

A predictor answers one request at a time::

    predict(images, prompt, *, max_new_tokens, content=None) -> str

``images`` are RGB PIL images in order; ``prompt`` is the user text (lmms-eval places the images
before it); ``content``, when given, is the interleaved form (strings, and ints indexing
``images``) that lmms-eval's chat path uses (MMMU). Decoding is greedy; the runner cuts the answer
at the benchmark's stop strings and strips it, as lmms-eval does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from PIL import Image


@runtime_checkable
class Predictor(Protocol):
    def predict(self, images: Sequence[Image.Image], prompt: str, *, max_new_tokens: int,
                content: Sequence[str | int] | None = None) -> str: ...


def describe(predictor: object) -> dict:
    """Provenance of a predictor for results.json (``info()`` if it has one)."""
    info = getattr(predictor, "info", None)
    return dict(info()) if callable(info) else {"class": type(predictor).__name__}


def load_predictor(spec: str, **kwargs) -> Predictor:
    """``dummy:NAME`` -> a test-only predictor from :mod:`llava_ov15.eval.testing`; anything
    else is a checkpoint directory handed to :mod:`llava_ov15.eval.model_adapter`."""
    if spec.startswith("dummy:"):
        from .testing import make_dummy

        return make_dummy(spec.split(":", 1)[1])  # loader options do not apply
    from .model_adapter import load_model_predictor

    return load_model_predictor(spec, **kwargs)
