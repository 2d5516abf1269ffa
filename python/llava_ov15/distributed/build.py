"""``llava-pack build`` on a Ray cluster, byte-identical to the single-machine build.

The phases are the Rust engine's (``crates/packer/src/build/ray.rs``); this module only runs
them where they belong:

1. *prepare* (driver): options, output directory, input partitions (file × byte/row range,
   a pure function of the files) and, for ``resume``, what is already done;
2. *scan* (a task per partition): the local build's per-record processing; each returns the
   partition's per-record metadata (no image bytes), which the driver stores in the output's
   state directory as it arrives;
3. *plan* (driver): the local writer's decisions over that metadata in input order — exact
   duplicate keepers, keys, shard boundaries, ``rejects.jsonl``, statistics;
4. *write* (a task per shard): re-reads and re-processes the shard's records and writes the
   shard with the planned keys (``.partial``, then renamed);
5. *commit* (driver): shards in order, ``.nv-meta``, manifest and stats, as the local build.

A worker dying mid-task is retried by Ray (every task is idempotent); a driver interrupted
and rerun with ``resume=True`` scans only unscanned partitions and writes only unwritten
shards.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from llava_ov15.distributed.cluster import connect
from llava_ov15.distributed.tasks import Accounting, run_tasks

SCAN_PHASE = "build-scan"
WRITE_PHASE = "build-write"


def _native_phase(inputs: list[str], output: str, options: dict[str, Any],
                  phase: dict[str, Any]) -> str:
    from llava_ov15 import _native

    return _native.build(inputs, output, **options, ray_phase=json.dumps(phase))


def _task(cwd: str, inputs: list[str], output: str, options_json: str, phase: str,
          number: int) -> str:
    """Runs on a worker: one scan or write task. Paths are the driver's (relative ones are
    taken from the driver's folder, which a shared filesystem makes the same everywhere)."""
    os.chdir(cwd)
    options = json.loads(options_json)
    key = "part" if phase == "scan" else "shard"
    return _native_phase(inputs, output, options, {"phase": phase, key: number})


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def build(inputs: list[str], output: str, options: dict[str, Any], *, ray_address: str,
          num_cpus: int | None = None, partition_bytes: int | None = None) -> dict[str, Any]:
    """Run the build described by ``options`` (``_native.build``'s keyword arguments) on the
    cluster at ``ray_address`` (``auto``, ``local``, ``ray://…``, ``host:port``). Returns the
    build summary with a ``ray`` entry: tasks per phase, bytes through the object store,
    per-task timings and the driver's CPU seconds."""
    progress = options.get("progress", "auto")
    cpu0, t0 = time.process_time(), time.monotonic()
    # Tasks neither resume nor overwrite: the driver prepared the output already.
    task_options = {**options, "resume": False, "overwrite": False, "progress": "quiet"}
    with connect(ray_address, num_cpus=num_cpus) as cluster:
        cluster.check_output(output)
        prep = json.loads(_native_phase(inputs, output, options, {
            "phase": "prepare", "partition_bytes": partition_bytes}))
        if prep.get("complete"):
            return prep["complete"]
        acc = Accounting()
        common = (os.getcwd(), inputs, output, json.dumps(task_options))
        scan_files = [Path(p) for p in prep["scan_files"]]
        scanned = set(prep["scanned"])
        todo = [k for k in range(prep["parts"]) if k not in scanned]
        if not prep["planned"]:
            def save(i: int, text: str) -> None:
                _write_atomic(scan_files[todo[i]], text)

            scan_files[0].parent.mkdir(parents=True, exist_ok=True)
            run_tasks(_task, [("scan", k) for k in todo], phase=SCAN_PHASE, common=common,
                      on_result=save, ordered=False, progress=progress, accounting=acc)
            plan = json.loads(_native_phase(inputs, output, task_options, {"phase": "plan"}))
            shards, written = plan["shards"], []
        else:
            todo = []
            shards, written = prep["shards"], prep["written"]
        done = set(written)
        unwritten = [s for s in range(shards) if s not in done]
        run_tasks(_task, [("write", s) for s in unwritten], phase=WRITE_PHASE, common=common,
                  on_result=lambda i, r: None, ordered=False, progress=progress,
                  accounting=acc)
        seconds = time.monotonic() - t0
        summary = json.loads(_native_phase(inputs, output, task_options, {
            "phase": "commit", "seconds": seconds}))
        if progress != "quiet":
            print(f"llava-pack: {acc.log_line()}", file=sys.stderr)
    info = acc.summary()
    summary["ray"] = {
        "nodes": len(cluster.nodes),
        "partitions": prep["parts"],
        "scanned": len(todo),
        "written": len(unwritten),
        "shards": shards,
        "object_store_bytes": info["object_store_bytes"],
        "phases": info["phases"],
        "tasks": info["tasks"],
        "driver_cpu_seconds": time.process_time() - cpu0,
    }
    return summary
