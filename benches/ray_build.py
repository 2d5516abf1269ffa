"""`llava-pack build` on a local Ray vs the single-process build, on the same corpus.

Prints wall times and their ratio, the driver's CPU seconds per shard, bytes through Ray's
object store and per record, the scan metadata stored per record (the plan's input) and the
per-task timings that a cluster projection starts from. Checks that both outputs are equal.

    python benches/ray_build.py [--n 2000] [--cpus 2] [--samples-per-shard 200]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from llava_ov15 import pack
from llava_ov15.demo.corpus import CorpusSpec, write_corpus
from llava_ov15.distributed import build as ray_build
from llava_ov15.distributed import connect


def digest(out: Path) -> dict[str, str]:
    files = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_file() and not rel.startswith(".llava-pack/") and rel != "stats.json":
            files[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="corpus records")
    ap.add_argument("--cpus", type=int, default=2, help="local Ray CPUs = local workers")
    ap.add_argument("--samples-per-shard", type=int, default=200)
    ap.add_argument("--partition-mb", type=float, default=0.1,
                    help="scan partition size (small: several partitions on a small corpus)")
    a = ap.parse_args()
    opts = {"samples_per_shard": a.samples_per_shard, "progress": "quiet", "workers": a.cpus}
    with tempfile.TemporaryDirectory(prefix="ray-build-bench-") as tmp:
        root = Path(tmp)
        corpus = write_corpus(root / "corpus", CorpusSpec(n=a.n, seed=1, max_side=640,
                                                          shapes=("caption", "conversations")))
        t0 = time.perf_counter()
        local = pack.build(corpus, root / "local", max_reject_rate=None, **opts)
        t_local = time.perf_counter() - t0
        with connect("local", num_cpus=a.cpus):
            t0 = time.perf_counter()
            s = ray_build.build([str(corpus)], str(root / "ray"), opts, ray_address="local",
                                partition_bytes=int(a.partition_mb * 1e6))
            t_ray = time.perf_counter() - t0
        same = digest(root / "local") == digest(root / "ray")
        r = s["ray"]
        scan_bytes = sum(p.stat().st_size for p in
                         (root / "ray" / ".llava-pack" / "ray" / "scan").glob("*.jsonl"))
        recs = local["records"]
        per_task = {ph: statistics.median(t["seconds"] for t in r["tasks"] if t["phase"] == ph)
                    for ph in r["phases"]}
        print(json.dumps({
            "records": recs, "shards": local["shards"], "partitions": r["partitions"],
            "local_seconds": round(t_local, 3), "ray_seconds": round(t_ray, 3),
            "ray_over_local": round(t_ray / t_local, 2),
            "driver_cpu_seconds": round(r["driver_cpu_seconds"], 3),
            "driver_cpu_ms_per_shard": round(1000 * r["driver_cpu_seconds"] / local["shards"], 1),
            "object_store_bytes": r["object_store_bytes"],
            "object_store_bytes_per_record": round(r["object_store_bytes"] / recs, 1),
            "scan_metadata_bytes_per_record": round(scan_bytes / recs, 1),
            "task_seconds": {ph: round(v["task_seconds"], 3) for ph, v in r["phases"].items()},
            "phase_wall_seconds": {ph: round(v["wall_seconds"], 3)
                                   for ph, v in r["phases"].items()},
            "median_task_seconds": {ph: round(v, 4) for ph, v in per_task.items()},
            "records_per_task_second": {
                ph: round(recs / v["task_seconds"], 1) for ph, v in r["phases"].items()},
            "identical_output": same,
        }, indent=1))
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
