"""`llava-pack dedup --ray` on a local Ray vs the single-process dedup, on the same build.

Prints wall times (median of --repeat runs, Ray's start-up measured apart), the read phase's
share, bytes through the object store per sample, the driver's CPU seconds and per-task
timings (what a cluster projection starts from). Checks that the output files are equal.

    python benches/ray_dedup.py [--n 4000] [--cpus 2] [--samples-per-shard 200]
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
from llava_ov15.distributed import connect

FILES = ("drop.txt", "clusters.jsonl", "contamination.jsonl")


def digest(out: Path) -> dict:
    d = {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in FILES}
    stats = json.loads((out / "dedup_stats.json").read_text())
    stats.pop("seconds")
    d["dedup_stats.json"] = stats
    return d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="corpus records")
    ap.add_argument("--cpus", type=int, default=2, help="local Ray CPUs")
    ap.add_argument("--samples-per-shard", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ray-dedup-bench-") as tmp:
        root = Path(tmp)
        # Tiny images: dedup reads only the jsons, so image size does not matter here.
        corpus = write_corpus(root / "corpus", CorpusSpec(
            n=a.n, seed=1, min_side=32, max_side=64, near_dup_fraction=0.1,
            multi_image_fraction=0.1, shapes=("caption", "conversations")))
        shards = root / "shards"
        pack.build(corpus, shards, samples_per_shard=a.samples_per_shard, progress="quiet",
                   workers=a.cpus, max_reject_rate=None)
        opts = {"progress": "quiet", "contact_sheet": False, "overwrite": True}
        t_local = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            local = pack.dedup(shards, root / "local", **opts)
            t_local.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with connect("local", num_cpus=a.cpus):
            t_start = time.perf_counter() - t0
            t_ray, runs = [], []
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                runs.append(pack.dedup(shards, root / "ray", ray_address="local", **opts))
                t_ray.append(time.perf_counter() - t0)
        same = digest(root / "local") == digest(root / "ray")
        r = runs[-1]["ray"]
        n = local["samples"]
        reads = [t["seconds"] for t in r["tasks"]]
        print(json.dumps({
            "samples": n, "images": local["images"], "shards": r["shards"],
            "read_tasks": r["read_tasks"],
            "local_seconds": round(statistics.median(t_local), 3),
            "ray_seconds": round(statistics.median(t_ray), 3),
            "ray_start_seconds": round(t_start, 2),
            "ray_over_local": round(statistics.median(t_ray) / statistics.median(t_local), 2),
            "ray_read_phase_seconds": round(r["read_seconds"], 3),
            "driver_cpu_seconds": round(r["driver_cpu_seconds"], 3),
            "object_store_bytes": r["object_store_bytes"],
            "result_bytes_per_sample": round(r["result_bytes"] / n, 1),
            "median_read_task_seconds": round(statistics.median(reads), 4),
            "samples_per_read_task_second": round(n / sum(reads), 1),
            "identical_output": same,
        }, indent=1))
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
