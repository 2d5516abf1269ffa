"""Python API of the Rust data engine (`llava-pack`).

`build()`, `pack()` and `buckets()` are the same code paths as `llava-pack build|pack|buckets`:
all call the native engine, which releases the GIL and can be interrupted with Ctrl-C (the job
stops at the next chunk / sample and `resume=True` continues it). A `build()` or `pack()` whose
output has no samples, or more rejects than ``max_reject_rate``, raises :class:`RejectsError`
after writing everything (its ``summary`` attribute holds the summary).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, Literal

from llava_ov15 import _native
from llava_ov15._native import InputError, OutputError, PackError, ResumeError
from llava_ov15.data.lengths import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from llava_ov15.rejects import (
    DEFAULT_MAX_REJECT_RATE,
    RejectsError,
    check_build,
    check_pack,
    check_rate,
)

__all__ = ["build", "pack", "buckets", "dedup", "near_duplicates", "PackError", "InputError",
           "OutputError", "ResumeError", "RejectsError", "FORMAT_VERSION"]

PathArg = str | os.PathLike[str]

FORMAT_VERSION: int = _native.FORMAT_VERSION


def _non_negative(**values: int) -> None:
    """Counts cross into Rust as unsigned integers: reject negatives with a clear message."""
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value}")


def build(
    input: PathArg | Sequence[PathArg],
    output: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    prefix: str = "shard",
    shard_size: int = 1 << 30,
    samples_per_shard: int = 10_000,
    workers: int = 0,
    phash: Literal["fast", "exact", "off"] = "fast",
    dhash: bool = False,
    dedup: Literal["exact", "sample", "image", "off"] = "exact",
    max_pixels: int | None = None,
    max_image_pixels: int | None = None,
    max_file_bytes: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Literal["auto", "bar", "log", "quiet"] = "auto",
    max_reject_rate: float | None = DEFAULT_MAX_REJECT_RATE,
    text_clean: Literal["default", "off", "strict"] = "default",
    text_rules: str | Sequence[str] | None = None,
    max_text_tokens: int | None = None,
    max_repeats: int | None = None,
    boilerplate: str | os.PathLike[str] | None = None,
    fix_placeholders: Literal["off", "prepend"] = "off",
    dedup_text: bool = False,
    text_report: int = 0,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Build WebDataset shards from a JSONL / JSON array (either .zst) / Parquet corpus.

    ``input``: a file or glob, or a list of them read in that order. ``dedup``: ``exact``
    (= ``sample``, default) drops a sample whose images *and* normalised text repeat an earlier
    one; ``image`` drops a sample whose images alone repeat (caption corpora); ``off``.

    Text cleaning (docs/format.md, "Text cleaning"), before dedup and writing:
    ``text_clean`` ``default`` (normalise and reject with every rule), ``strict`` (tighter
    thresholds) or ``off``; ``text_rules`` switches steps on top of it (``"-mojibake,+roles"``
    or a list of such entries); ``max_text_tokens`` rejects texts estimated longer;
    ``max_repeats`` is the repetition threshold (default 10, strict 5); ``boilerplate`` a file
    of boilerplate captions (one per line) replacing the built-in list; ``fix_placeholders=
    "prepend"`` adds ``<image>\n`` to a one-image conversation without a marker; ``dedup_text``
    drops captions repeating an earlier cleaned caption; ``text_report`` N writes N
    before/after examples per step to ``text_report.jsonl``.

    Returns the summary: records, samples, rejects, shards, bytes, seconds, stats.
    Raises ValueError for invalid options, InputError / OutputError / ResumeError
    (all PackError) for job-level failures, InputError when the input holds no record, and
    RejectsError (a PackError, raised after everything is written) when no sample was written
    or more than ``max_reject_rate`` of the records were rejected (``None``: no limit).
    Otherwise per-sample problems are not raised: they are recorded in ``rejects.jsonl`` and
    counted in ``stats.json``.

    ``ray_address`` (``"auto"``, ``"local"``, ``"ray://host:port"``): run on a Ray cluster
    (docs/distributed.md) with the same output bytes; the summary then has a ``ray`` entry.
    """
    _non_negative(shard_size=shard_size, samples_per_shard=samples_per_shard, workers=workers,
                  text_report=text_report, max_text_tokens=max_text_tokens or 0,
                  max_repeats=max_repeats or 0)
    check_rate(max_reject_rate)
    inputs = [input] if isinstance(input, str | os.PathLike) else list(input)
    options = dict(
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
        text_clean=text_clean,
        text_rules=_text_rules(text_rules),
        max_text_tokens=max_text_tokens,
        max_repeats=max_repeats,
        boilerplate=os.fspath(boilerplate) if boilerplate is not None else None,
        fix_placeholders=fix_placeholders,
        dedup_text=dedup_text,
        text_report=text_report,
    )
    paths = [os.fspath(i) for i in inputs]
    if ray_address is not None:
        from llava_ov15.distributed.build import build as ray_build

        result = ray_build(paths, os.fspath(output), options, ray_address=ray_address)
    else:
        result = json.loads(_native.build(paths, os.fspath(output), **options))
    check_build(result, max_reject_rate)
    return result


def _text_rules(rules: str | Sequence[str] | None) -> list[str]:
    if rules is None:
        return []
    return [rules] if isinstance(rules, str) else list(rules)


def clean_captions(
    texts: Sequence[str],
    *,
    text_clean: Literal["default", "off", "strict"] = "default",
    text_rules: str | Sequence[str] | None = None,
    max_text_tokens: int | None = None,
    max_repeats: int | None = None,
    boilerplate: str | os.PathLike[str] | None = None,
) -> list[tuple[str, str | None]]:
    """Clean captions exactly as ``build`` cleans caption samples (same options): a list of
    ``(cleaned caption, name of the rule that rejects it or None)``. For previews and
    benchmarks; one thread."""
    _non_negative(max_text_tokens=max_text_tokens or 0, max_repeats=max_repeats or 0)
    return _native.clean_captions(
        list(texts),
        text_clean=text_clean,
        text_rules=_text_rules(text_rules),
        max_text_tokens=max_text_tokens,
        max_repeats=max_repeats,
        boilerplate=os.fspath(boilerplate) if boilerplate is not None else None,
    )


def pack(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str],
    *,
    max_len: int = 8192,
    max_image_tokens: int | None = None,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    prefix: str = "pack",
    packs_per_shard: int = 1000,
    shard_size: int = 1 << 30,
    workers: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    progress: Literal["auto", "bar", "log", "quiet"] = "auto",
    caption_format: Literal["pretrain", "chat"] = "pretrain",
    max_reject_rate: float | None = DEFAULT_MAX_REJECT_RATE,
    exclude: str | os.PathLike[str] | None = None,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Pack the shards of a `build` output directory into sequences of at most ``max_len``
    tokens (and ``max_image_tokens`` image tokens per pack, if given).

    Lengths are those of the training strings (docs/format.md §3.1): caption samples in the
    reference's pretraining form (``caption_format="chat"``: as a chat turn). Writes packed
    shards (one tar sample per pack), ``.tar.idx``, ``.nv-meta/``, ``manifest.json`` (its
    ``options`` record everything training needs; read them with
    ``llava_ov15.data.pack_manifest.PackInfo``), a copy of the tokenizer as
    ``tokenizer.json``, ``pack_stats.json`` and ``rejects.jsonl``; returns the summary.
    Raises RejectsError (after writing everything) when no pack was written or more than
    ``max_reject_rate`` of the source samples were rejected (``None``: no limit).
    ``exclude``: a ``drop.txt`` from :func:`dedup` (or any key list); those samples are not
    packed and appear in ``rejects.jsonl`` with the list's reason (category ``excluded``);
    they do not count toward ``max_reject_rate``.
    ``ray_address``: run on a Ray cluster (``"auto"``, ``"ray://host:port"``, or ``"local"`` for
    a private one) — the same output bytes; ``workers`` is then the cluster's (see
    docs/distributed.md). The summary gains ``"ray"`` (object-store bytes, task timings).
    """
    _non_negative(max_len=max_len, packs_per_shard=packs_per_shard, shard_size=shard_size,
                  workers=workers)
    if max_image_tokens is not None and max_image_tokens <= 0:
        raise ValueError(f"max_image_tokens must be positive, got {max_image_tokens}")
    check_rate(max_reject_rate)
    if ray_address is not None:
        from llava_ov15.distributed.pack import pack_on_ray

        result = pack_on_ray(
            os.fspath(input), os.fspath(output), os.fspath(tokenizer), ray_address=ray_address,
            progress=progress, max_len=max_len, max_image_tokens=max_image_tokens,
            min_pixels=min_pixels, max_pixels=max_pixels, prefix=prefix,
            packs_per_shard=packs_per_shard, shard_size=shard_size, resume=resume,
            overwrite=overwrite, caption_format=caption_format,
            exclude=os.fspath(exclude) if exclude is not None else None,
        )
        check_pack(_without_excluded(result), max_reject_rate)
        return result
    summary = _native.pack(
        os.fspath(input), os.fspath(output), os.fspath(tokenizer), max_len=max_len,
        max_image_tokens=max_image_tokens, min_pixels=min_pixels, max_pixels=max_pixels,
        prefix=prefix, packs_per_shard=packs_per_shard, shard_size=shard_size, workers=workers,
        resume=resume, overwrite=overwrite, progress=progress, caption_format=caption_format,
        exclude=os.fspath(exclude) if exclude is not None else None,
    )
    result = json.loads(summary)
    check_pack(_without_excluded(result), max_reject_rate)
    return result


def _without_excluded(result: dict[str, Any]) -> dict[str, Any]:
    """The summary as ``max_reject_rate`` sees it: samples left out by ``exclude`` were
    chosen, not rejected, so they count neither as rejects nor as source samples."""
    st = result["stats"]
    n = st.get("rejects_by_reason", {}).get("excluded", 0)
    if not n:
        return result
    by_reason = {k: v for k, v in st["rejects_by_reason"].items() if k != "excluded"}
    return {**result, "rejects": result["rejects"] - n,
            "stats": {**st, "source_samples": st["source_samples"] - n,
                      "rejects_by_reason": by_reason}}


def buckets(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str],
    *,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 0,
    plots: bool = True,
    progress: Literal["auto", "bar", "log", "quiet"] = "auto",
    exclude: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Aspect-ratio / native-size / token-count distribution of built shards.

    Writes ``output/buckets.json`` and (``plots=True``, needs matplotlib) PNG histograms;
    returns the buckets document.
    """
    _non_negative(workers=workers)
    doc = json.loads(_native.buckets(
        os.fspath(input), os.fspath(output), os.fspath(tokenizer), min_pixels=min_pixels,
        max_pixels=max_pixels, workers=workers, progress=progress,
        exclude=os.fspath(exclude) if exclude is not None else None,
    ))
    if plots:
        from llava_ov15.plots import write_bucket_plots

        doc["plots"] = [str(p) for p in write_bucket_plots(doc, output)]
    return doc


def near_duplicates(hashes: Any, max_distance: int) -> Any:
    """Every pair ``i < j`` of 64-bit ``hashes`` within Hamming distance ``max_distance``
    (0..16), exactly (multi-index hashing, not approximate): an ``(n_pairs, 3)`` int64 array of
    ``[i, j, distance]`` rows sorted by ``(i, j)``. Runs with the GIL released."""
    import numpy as np

    if not 0 <= int(max_distance) <= 16:
        raise ValueError(f"max_distance must be in 0..16, got {max_distance}")
    arr = np.ascontiguousarray(np.asarray(hashes).astype(np.uint64, copy=False).ravel())
    return _native.near_duplicates(arr, int(max_distance))


def dedup(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    max_distance: int = 8,
    keep: Literal["largest", "first"] = "largest",
    multi_image: Literal["any", "all"] = "any",
    verify: Literal["dhash"] | None = None,
    verify_distance: int = 10,
    against: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    benchmarks: Sequence[str] | None = None,
    rewrite: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    contact_sheet: bool = True,
    progress: Literal["auto", "bar", "log", "quiet"] = "auto",
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Near-duplicate removal over a `build` output's perceptual hashes (no image is decoded).

    Writes ``output/drop.txt`` (sorted ``KEY<TAB>REASON`` lines), ``clusters.jsonl``,
    ``contamination.jsonl``, ``dedup_stats.json`` and, with ``contact_sheet``, a PNG of the
    largest clusters; returns the stats. ``against``: with ``benchmarks``, an evaluation data
    directory (the layout ``python -m llava_ov15.eval`` reads) whose images are hashed with the
    build's phash; without, other build outputs to dedup against. Every training sample within
    ``max_distance`` of such an image is dropped, whatever the keeper rule. ``verify="dhash"``
    (shards built with ``dhash=True``): a pair of training images also needs its dhashes within
    ``verify_distance`` (0..16) bits to count; matches against ``against`` are not verified.
    ``rewrite``: also write a shard directory without the dropped samples (same format as a
    build, kept samples copied byte for byte; ``overwrite`` replaces an existing one); its
    summary is ``stats["rewrite"]``.
    ``ray_address`` (``"auto"``, ``"ray://host:port"``, or ``"local"`` for a private one): read
    the hashes of ``input`` and of the ``against`` build outputs with Ray tasks; the search and
    the outputs stay on this machine and are the same files. The stats gain ``"ray"``.
    """
    from llava_ov15 import dedup as helpers

    if not 0 <= int(max_distance) <= 16:
        raise ValueError(f"max_distance must be in 0..16, got {max_distance}")
    if verify not in (None, "dhash"):
        raise ValueError(f"verify must be None or 'dhash', got {verify!r}")
    if not 0 <= int(verify_distance) <= 16:
        raise ValueError(f"verify_distance must be in 0..16, got {verify_distance}")
    dirs = [] if against is None else (
        [against] if isinstance(against, str | os.PathLike) else list(against))
    say = (lambda m: None) if progress == "quiet" else (
        lambda m: print(f"llava-pack dedup: {m}", file=sys.stderr, flush=True))
    references: list[tuple[int, str, int]] = []
    other: list[str] = []
    if benchmarks:
        if len(dirs) != 1:
            raise ValueError("--benchmarks needs exactly one --against DATA directory")
        mode = helpers.build_phash_mode(input)
        references = helpers.benchmark_hashes(dirs[0], list(benchmarks), mode=mode, log=say)
    else:
        for d in dirs:
            if not (os.path.isdir(d) and (os.path.isfile(os.path.join(d, "manifest.json"))
                                          or any(n.endswith(".tar") for n in os.listdir(d)))):
                raise ValueError(f"--against {d}: not a llava-pack build output (no "
                                 "manifest.json or *.tar); for evaluation data add --benchmarks")
            other.append(os.fspath(d))
    options = dict(max_distance=int(max_distance), keep=keep, multi_image=multi_image,
                   verify=verify, verify_distance=int(verify_distance), against=other,
                   references=references,
                   rewrite=None if rewrite is None else os.fspath(rewrite), overwrite=overwrite,
                   progress=progress)
    if ray_address is not None:
        from llava_ov15.distributed.dedup import dedup_on_ray

        stats = dedup_on_ray(os.fspath(input), os.fspath(output), ray_address=ray_address,
                             **options)
    else:
        job = _native.DedupJob(os.fspath(input), os.fspath(output), **options)
        stats = json.loads(job.run(read_here=True))
    sheet = None
    if contact_sheet:
        refs = None
        if benchmarks and stats["contaminated_images"]:
            with open(os.path.join(output, "contamination.jsonl"), encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
            refs = helpers.benchmark_images(dirs[0], [(r["benchmark"], r["row"]) for r in rows[:8]])
        sheet = helpers.contact_sheet(input, output, references=refs)
    if sheet is not None:
        stats["contact_sheet"] = str(sheet)
    else:  # never leave an earlier run's sheet next to this run's clusters
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(output, "contact_sheet.png"))
    return stats
