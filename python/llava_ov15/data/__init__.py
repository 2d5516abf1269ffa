"""Data utilities: the Qwen tokenizer file builder, token lengths, shard loaders.

`sample_length` (from `llava_ov15.data.lengths`) is resolved lazily so that importing this
package does not load the native extension.
"""

from __future__ import annotations

from typing import Any

__all__ = ["sample_length"]


def __getattr__(name: str) -> Any:
    if name == "sample_length":
        from llava_ov15.data.lengths import sample_length

        return sample_length
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
