"""Token lengths of samples: the one implementation (Rust `bucketer::LengthCounter`).

`sample_length` is what `llava-pack pack` uses to fill packs, and what the training loader
must use (never re-count in Python): image tokens from the exact `smart_resize` of the stored
width/height (turned upright by the EXIF orientation), text tokens from the HF
`tokenizer.json` over the training string (docs/format.md §3.1): captions in the reference's
pretraining form by default (``caption_format="chat"``: as a chat turn), conversations in the
Qwen2-VL chat template without its final newline.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any

from llava_ov15 import _native

__all__ = ["sample_length", "length_counter", "smart_resize"]

DEFAULT_MIN_PIXELS = 3136
DEFAULT_MAX_PIXELS = 2_560_000


@lru_cache(maxsize=8)
def _counter(tokenizer: str, min_pixels: int, max_pixels: int, caption_format: str,
             eos_token: str | None) -> _native.LengthCounter:
    return _native.LengthCounter(tokenizer, min_pixels=min_pixels, max_pixels=max_pixels,
                                 caption_format=caption_format, eos_token=eos_token)


def length_counter(tokenizer: str | os.PathLike[str], *, min_pixels: int = DEFAULT_MIN_PIXELS,
                   max_pixels: int = DEFAULT_MAX_PIXELS, caption_format: str = "pretrain",
                   eos_token: str | None = None) -> _native.LengthCounter:
    """The cached native counter for a tokenizer file, pixel limits and training strings
    (``caption_format`` "pretrain" | "chat"; ``eos_token`` None: the tokenizer's own)."""
    return _counter(os.fspath(tokenizer), min_pixels, max_pixels, caption_format, eos_token)


def sample_length(sample: dict[str, Any] | bytes | str, tokenizer: str | os.PathLike[str], *,
                  min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS,
                  caption_format: str = "pretrain",
                  detail: bool = False) -> int | dict[str, Any]:
    """Sequence length of a per-sample json document (dict, or its bytes/str as stored), for
    the training string of ``caption_format`` ("pretrain" | "chat").

    Returns the total token count, or with ``detail=True`` the dict ``{total, text_tokens,
    special_tokens, image_tokens: [...], image_patches: [...], image_sizes: [[h, w], ...]}``
    (``image_sizes``: the upright resized size of each image). Raises ValueError for a
    sample that cannot be rendered (no text, placeholder/image mismatch, missing size).
    """
    if isinstance(sample, dict):
        raw = json.dumps(sample, ensure_ascii=False).encode()
    elif isinstance(sample, str):
        raw = sample.encode()
    else:
        raw = bytes(sample)
    counter = length_counter(tokenizer, min_pixels=min_pixels, max_pixels=max_pixels,
                             caption_format=caption_format)
    d = counter.sample_length(raw)
    return d if detail else int(d["total"])


def smart_resize(height: int, width: int, *, factor: int = 28, min_pixels: int = DEFAULT_MIN_PIXELS,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Exact Qwen2-VL smart_resize → (height, width)."""
    return _native.smart_resize(height, width, factor, min_pixels, max_pixels)
