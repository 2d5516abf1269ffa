"""Data utilities: the Qwen tokenizer file builder, token lengths, shard loaders,
preprocessing and collation.

Names are resolved lazily so that importing this package (e.g. for the tokenizer builder) does
not load the native extension or torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "sample_length": "llava_ov15.data.lengths",
    "block_diagonal_causal_mask": "llava_ov15.data.collate",
    "collate_packed": "llava_ov15.data.collate",
    "collate_padded": "llava_ov15.data.collate",
    "SampleProcessor": "llava_ov15.data.preprocess",
    "preprocess_images": "llava_ov15.data.preprocess",
    "ShardDataset": "llava_ov15.data.shards",
    "ShardError": "llava_ov15.data.shards",
    "ShardIterable": "llava_ov15.data.shards",
    "ShardLoader": "llava_ov15.data.shards",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
