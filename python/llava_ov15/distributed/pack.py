"""`llava-pack pack --ray …`: the pack job's phases as Ray tasks, the same bytes as one process.

1. **scan** — one task per source shard: tar headers + each sample's json → compact metadata
   (offsets, sizes, token lengths, reject reasons; ~100 bytes per sample, no image bytes).
2. **plan** — on the driver, the same Rust code as the local run: rejects, best-fit-decreasing
   packing, the byte layout of every output shard, the skeleton (headers, pack json pieces).
3. **copy** — one task per source shard: read it once and write its image / json bytes at
   their planned offsets into the `.partial` output files (every range has one writer, so the
   order and any retry write the same bytes); the driver checkpoints each finished source, so
   `--resume` after a driver crash copies only the others.
4. **finalize** — one task per output shard: fsync, `.tar.idx`, rename, sha256; then the
   driver writes `.nv-meta/`, rejects, stats, tokenizer copy and manifest in order.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from llava_ov15 import _native
from llava_ov15.distributed.cluster import connect
from llava_ov15.distributed.tasks import Accounting, run_tasks


def _scan(tokenizer: str, sha256: str, min_pixels: int, max_pixels: int, caption_format: str,
          path: str) -> bytes:
    return _native.pack_scan_shard(path, tokenizer, sha256, min_pixels, max_pixels,
                                   caption_format)


def _copy(work: bytes) -> int:
    return _native.pack_copy(work)


def _finalize(output: str, name: str, offsets: bytes, nbytes: int) -> str:
    return _native.pack_finalize_shard(output, name, offsets, nbytes)


class _Works(Sequence):
    """Copy-task arguments made on demand: the driver never holds all of them at once."""

    def __init__(self, job: Any, todo: list[int]) -> None:
        self.job, self.todo = job, todo

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, i: int) -> tuple[bytes]:  # type: ignore[override]
        return (self.job.copy_work(self.todo[i]),)


def _log(progress: str, msg: str) -> None:
    if progress != "quiet":
        print(f"llava-pack: {msg}", file=sys.stderr, flush=True)


def pack_on_ray(
    input: str, output: str, tokenizer: str, *, ray_address: str, progress: str = "auto",
    num_cpus: int | None = None, **options: Any,
) -> dict[str, Any]:
    """Run :func:`llava_ov15.pack.pack` on a Ray cluster (``options``: its keyword arguments
    except ``workers``); returns the same summary plus ``"ray"`` (object-store bytes, per-phase
    and per-task timings)."""
    with connect(ray_address, num_cpus=num_cpus) as cluster:
        job = _native.PackJob(input, output, tokenizer, progress=progress, **options)
        if job.is_complete():
            _log(progress, f"{output} is already complete")
            return json.loads(job.summary())
        cluster.check_output(output)
        acc = Accounting()
        sources = job.sources()
        _log(progress, f"measuring {len(sources)} source shards on Ray ({len(cluster.nodes)} "
             f"node(s), {cluster.cpus} CPUs)")
        t0 = time.monotonic()
        # In source order; each scan is decoded as it arrives and its bytes dropped.
        run_tasks(_scan, [(p,) for p in sources], phase="pack-scan", common=job.scan_options(),
                  on_result=lambda i, scan: job.add_scan(scan), progress=progress,
                  accounting=acc)
        t_scan = time.monotonic() - t0
        t1 = time.monotonic()
        todo = job.plan_added()
        t_pack = time.monotonic() - t1
        if job.resumed():
            _log(progress, f"resuming, {job.resumed()} of {len(sources)} source shards already "
                 "copied")
        t2 = time.monotonic()
        run_tasks(_copy, _Works(job, todo), phase="pack-copy", progress=progress,
                  accounting=acc, ordered=False,
                  on_result=lambda i, n: job.mark_copied(todo[i]))
        shards = job.out_shards()
        shas = run_tasks(_finalize, shards, phase="pack-finalize", common=(os.fspath(output),),
                         progress=progress, accounting=acc)
        t_copy = time.monotonic() - t2
        # The keys of the local run's pack_stats.json `throughput` (workers: cluster CPUs).
        timings = {"scan_seconds": t_scan, "pack_seconds": t_pack, "copy_seconds": t_copy,
                   "samples_per_second_scan": job.source_samples() / max(t_scan, 1e-9),
                   "workers": cluster.cpus}
        summary = json.loads(job.finish(shas, json.dumps(timings)))
        summary["ray"] = acc.summary()
        _log(progress, acc.log_line())
        return summary
