"""Data utilities: the Qwen tokenizer file builder, shard loaders, preprocessing, collation."""

from llava_ov15.data.collate import block_diagonal_causal_mask, collate_packed, collate_padded
from llava_ov15.data.preprocess import SampleProcessor, preprocess_images
from llava_ov15.data.shards import (
    ShardDataset,
    ShardError,
    ShardIterable,
    ShardLoader,
)

__all__ = [
    "SampleProcessor", "ShardDataset", "ShardError", "ShardIterable", "ShardLoader",
    "block_diagonal_causal_mask", "collate_packed", "collate_padded", "preprocess_images",
]
