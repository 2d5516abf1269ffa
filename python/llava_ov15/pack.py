"""Python API of the Rust data engine (`llava-pack`).

`build()` is the same code path as `llava-pack build`: both call the native engine, which
releases the GIL and can be interrupted with Ctrl-C (the job stops at the next chunk and
`resume=True` continues it).
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

from llava_ov15 import _native
from llava_ov15._native import InputError, OutputError, PackError, ResumeError

__all__ = ["build", "PackError", "InputError", "OutputError", "ResumeError", "FORMAT_VERSION"]

FORMAT_VERSION: int = _native.FORMAT_VERSION


def build(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    prefix: str = "shard",
    shard_size: int = 1 << 30,
    samples_per_shard: int = 10_000,
    workers: int = 0,
    phash: Literal["fast", "exact", "off"] = "fast",
    dhash: bool = False,
    dedup: Literal["exact", "off"] = "exact",
    max_pixels: int | None = None,
    max_image_pixels: int | None = None,
    max_file_bytes: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Literal["auto", "bar", "log", "quiet"] = "auto",
) -> dict[str, Any]:
    """Build WebDataset shards from a JSONL / JSONL.zst / Parquet corpus.

    Returns the summary: records, samples, rejects, shards, bytes, seconds, stats.
    Raises ValueError for invalid options, InputError / OutputError / ResumeError
    (all PackError) for job-level failures. Per-sample problems are never raised: they are
    recorded in ``rejects.jsonl`` and counted in ``stats.json``.
    """
    for name, value in (("shard_size", shard_size), ("samples_per_shard", samples_per_shard),
                        ("workers", workers)):
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value}")
    summary = _native.build(
        os.fspath(input),
        os.fspath(output),
        image_root=os.fspath(image_root) if image_root is not None else None,
        prefix=prefix,
        shard_size=shard_size,
        samples_per_shard=samples_per_shard,
        workers=workers,
        phash=phash,
        dhash=dhash,
        dedup=dedup,
        max_pixels=max_pixels,
        max_image_pixels=max_image_pixels,
        max_file_bytes=max_file_bytes,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
    )
    return json.loads(summary)
