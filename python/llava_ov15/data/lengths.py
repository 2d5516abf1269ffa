"""Token lengths of samples: the one implementation (Rust `bucketer::LengthCounter`).

`sample_length` is what `llava-pack pack` uses to fill packs, and what the training loader
must use (never re-count in Python): image tokens from the exact `smart_resize` of the stored
width/height, text tokens from the HF `tokenizer.json` over the Qwen2-VL chat template.
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
def _counter(tokenizer: str, min_pixels: int, max_pixels: int) -> _native.LengthCounter:
    return _native.LengthCounter(tokenizer, min_pixels=min_pixels, max_pixels=max_pixels)


def length_counter(tokenizer: str | os.PathLike[str], *, min_pixels: int = DEFAULT_MIN_PIXELS,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> _native.LengthCounter:
    """The cached native counter for a tokenizer file and pixel limits."""
    return _counter(os.fspath(tokenizer), min_pixels, max_pixels)


def sample_length(sample: dict[str, Any] | bytes | str, tokenizer: str | os.PathLike[str], *,
                  min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS,
                  detail: bool = False) -> int | dict[str, Any]:
    """Sequence length of a per-sample json document (dict, or its bytes/str as stored).

    Returns the total token count, or with ``detail=True`` the dict ``{total, text_tokens,
    special_tokens, image_tokens: [...], image_patches: [...]}``. Raises ValueError for a
    sample that cannot be rendered (no text, placeholder/image mismatch, missing size).
    """
    if isinstance(sample, dict):
        raw = json.dumps(sample, ensure_ascii=False).encode()
    elif isinstance(sample, str):
        raw = sample.encode()
    else:
        raw = bytes(sample)
    d = length_counter(tokenizer, min_pixels=min_pixels, max_pixels=max_pixels).sample_length(raw)
    return d if detail else int(d["total"])


def smart_resize(height: int, width: int, *, factor: int = 28, min_pixels: int = DEFAULT_MIN_PIXELS,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Exact Qwen2-VL smart_resize → (height, width)."""
    return _native.smart_resize(height, width, factor, min_pixels, max_pixels)
