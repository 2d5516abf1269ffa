"""``llava-pack dedup`` on a Ray cluster, with the same output files as the single-machine run.

Only the *read* is distributed: every sample's json (key, per image phash, width × height,
dhash) — one small read per sample on a shared filesystem, 85M for the full corpus. Tasks
read groups of consecutive shards (``_native.dedup_read_shards``) and return compact rows
(~25 bytes per image plus the key); the driver adds them to its ``_native.DedupJob`` in shard
order and then runs the local job's own search, clustering, keeper choice and all-or-nothing
outputs (and ``--rewrite``), which need every hash in one place.

The driver checks the directories (packed, ``--phash off``, no shards) before any task runs,
exactly as the local read does. A worker dying mid-task is retried by Ray (reading is
idempotent); an interrupted driver leaves no output file (they are renamed into place
together at the end) and simply reruns.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from typing import Any

from llava_ov15 import _native
from llava_ov15.distributed.cluster import connect
from llava_ov15.distributed.tasks import Accounting, run_tasks

READ_PHASE = "dedup-read"

# Tasks per cluster CPU when grouping shards: enough that a slow node or a retried task does
# not hold up the end of the phase, few enough that per-task overhead stays negligible.
TASKS_PER_CPU = 4


def _read(cwd: str, dir: str, what: str, shards: list) -> bytes:
    """Runs on a worker: the rows of ``shards`` of ``dir``. Relative paths are the driver's
    (taken from its folder, the same everywhere on a shared filesystem)."""
    os.chdir(cwd)
    return _native.dedup_read_shards(dir, what, shards)


def _log(progress: str, msg: str) -> None:
    if progress != "quiet":
        print(f"llava-pack dedup: {msg}", file=sys.stderr, flush=True)


def read_tasks(dirs: list, shards_per_task: int) -> list[tuple[int, str, str, list]]:
    """``(directory index, path, what, shards)`` per task: consecutive shards of one
    directory, directories in order — the order the driver adds their rows in."""
    tasks = []
    for d, (path, what, shards) in enumerate(dirs):
        for i in range(0, len(shards), shards_per_task):
            tasks.append((d, path, what, shards[i:i + shards_per_task]))
    return tasks


def dedup_on_ray(input: str, output: str, *, ray_address: str, progress: str = "auto",
                 num_cpus: int | None = None, shards_per_task: int | None = None,
                 **options: Any) -> dict[str, Any]:
    """Run ``_native.DedupJob(input, output, **options)`` with its read phase on the Ray cluster
    at ``ray_address``; returns the same stats plus ``"ray"`` (tasks, object-store bytes,
    per-task timings, driver CPU seconds). ``shards_per_task``: default, the shards spread
    over about ``TASKS_PER_CPU`` tasks per cluster CPU."""
    cpu0, t0 = time.process_time(), time.monotonic()
    existed = os.path.exists(output)
    with connect(ray_address, num_cpus=num_cpus) as cluster:
        # Options and directories are checked before the cluster is touched further.
        job = _native.DedupJob(input, output, progress=progress, **options)
        try:
            cluster.check_output(output)
            dirs = job.dirs()
            n_shards = sum(len(s) for _, _, s in dirs)
            if shards_per_task is None:
                shards_per_task = max(1, math.ceil(n_shards / (TASKS_PER_CPU * cluster.cpus)))
            tasks = read_tasks(dirs, shards_per_task)
            _log(progress, f"reading {n_shards} shards in {len(tasks)} tasks on Ray "
                 f"({len(cluster.nodes)} node(s), {cluster.cpus} CPUs)")
            acc = Accounting()
            run_tasks(_read, [t[1:] for t in tasks], phase=READ_PHASE, common=(os.getcwd(),),
                      on_result=lambda i, rows: job.add(tasks[i][0], rows), ordered=True,
                      progress=progress, accounting=acc)
            t_read = time.monotonic() - t0
            stats = json.loads(job.run())
        except BaseException:
            # check_output made the directory: leave none behind, so a rerun needs no
            # --overwrite (the output files themselves are all or nothing).
            if not existed:
                with contextlib.suppress(OSError):
                    os.rmdir(output)
            raise
    _log(progress, acc.log_line())
    stats["ray"] = {
        "nodes": len(cluster.nodes),
        "shards": n_shards,
        "read_tasks": len(tasks),
        "read_seconds": t_read,
        "driver_cpu_seconds": time.process_time() - cpu0,
        **acc.summary(),
    }
    return stats
