"""Exact Hamming range search: `llava_ov15.pack.near_duplicates` vs faiss-cpu and numpy.

    python benches/dedup_search.py                      # 1M and 10M, d = 4, 8, 12, 2 threads
    python benches/dedup_search.py --sizes 1M --distances 8 --threads 2

For each hash set (random 64-bit; clustered = many near-equal groups, like real phash) and
distance: our time, pairs and working memory per hash (peak RSS growth of a fresh process,
less the input and the returned pairs); faiss `IndexBinaryMultiHash` (exact settings: `nhash`
disjoint blocks with `nflip = d // nhash`) and, at small d, `IndexBinaryHash` (`nflip = d`)
range search on the same hashes (up to --faiss-max hashes), with their pairs checked equal to
ours; numpy brute force on a --brute-sample subset, checked equal to ours on that subset and
extrapolated (× (N / sample)²). Each measurement runs in its own process, limited to
--threads (rayon and OpenMP). faiss-cpu comes from requirements/bench.txt (installed here
when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def hashes(kind: str, n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    # ~10 members per group, each up to 4 bits away from its centre.
    centres = rng.integers(0, 2**64, max(1, n // 10), dtype=np.uint64, endpoint=False)
    h = centres[rng.integers(0, len(centres), n)]
    for _ in range(4):
        flip = rng.random(n) < 0.5
        bit = np.left_shift(np.uint64(1), rng.integers(0, 64, n).astype(np.uint64))
        h = np.where(flip, h ^ bit, h)
    return h


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Highest resident set size seen while the block runs (sampled every 2 ms; the search
    releases the GIL, so the sampler keeps running)."""

    def __enter__(self):
        import threading

        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())


def worker(spec: dict) -> dict:
    """One measurement, in this (fresh) process."""
    import numpy as np

    h = hashes(spec["kind"], spec["n"])
    d = spec["d"]
    if spec["what"] == "ours":
        from llava_ov15 import pack

        with PeakRss() as mem:
            t = time.perf_counter()
            pairs = pack.near_duplicates(h, d)
            dt = time.perf_counter() - t
        # The Rust pair list (12 B/pair) and the returned array (24 B/pair) coexist at the end.
        work = max(0, mem.peak - mem.base - 36 * len(pairs))
        digest = int(np.bitwise_xor.reduce(pairs[:, 0] * 1_000_003 + pairs[:, 1])) if len(
            pairs) else 0
        return {"seconds": dt, "pairs": len(pairs), "bytes_per_hash": work / len(h),
                "digest": digest}
    if spec["what"].startswith("faiss"):
        import faiss

        faiss.omp_set_num_threads(spec["threads"])
        x = h.view(np.uint8).reshape(-1, 8)
        if spec["what"] == "faiss-multihash":
            nhash = spec["nhash"]
            index = faiss.IndexBinaryMultiHash(64, nhash, 64 // nhash)
            index.nflip = d // nhash
        else:
            index = faiss.IndexBinaryHash(64, spec["b"])
            index.nflip = d
        t = time.perf_counter()
        index.add(x)
        lims, _dist, ids = index.range_search(x, d + 1)   # faiss keeps distance < radius
        dt = time.perf_counter() - t
        q = np.repeat(np.arange(len(h)), np.diff(lims.astype(np.int64)))
        keep = ids > q
        i, j = q[keep], ids[keep]
        digest = int(np.bitwise_xor.reduce(i * 1_000_003 + j)) if len(i) else 0
        return {"seconds": dt, "pairs": int(keep.sum()), "digest": digest}
    if spec["what"] == "brute":
        from llava_ov15 import pack

        s = h[: spec["sample"]]
        t = time.perf_counter()
        found = []
        for a in range(0, len(s), 2048):
            x = np.bitwise_count(s[a:a + 2048, None] ^ s[None, :])
            ii, jj = np.nonzero(x <= d)
            keep = jj > ii + a
            found.append(np.stack([ii[keep] + a, jj[keep], x[ii[keep], jj[keep]]], axis=1))
        dt = time.perf_counter() - t
        brute = np.concatenate(found) if found else np.zeros((0, 3), np.int64)
        brute = brute[np.lexsort((brute[:, 1], brute[:, 0]))]
        ours = pack.near_duplicates(s, d)
        same = bool(np.array_equal(brute.astype(np.int64), ours))
        return {"seconds": dt, "pairs": len(brute), "sample": len(s), "equal_to_ours": same}
    raise ValueError(spec["what"])


def run(spec: dict, timeout: float) -> dict:
    env = dict(os.environ, RAYON_NUM_THREADS=str(spec["threads"]),
               OMP_NUM_THREADS=str(spec["threads"]))
    try:
        p = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f}s"}
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def ensure_faiss() -> bool:
    try:
        import faiss  # noqa: F401
        return True
    except ImportError:
        pass
    req = ROOT / "requirements" / "bench.txt"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(req)])
    return p.returncode == 0


def count(text: str) -> int:
    t = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6}.get(t[-1:], 1)
    return int(float(t.rstrip("KM")) * scale)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="1M,10M")
    ap.add_argument("--distances", default="4,8,12")
    ap.add_argument("--kinds", default="random,clustered")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--faiss-max", type=count, default=1_000_000,
                    help="largest N given to faiss (default 1M)")
    ap.add_argument("--faiss-distances", default="4,8",
                    help="distances given to faiss (default 4,8: at 12 it takes far longer)")
    ap.add_argument("--faiss-hash-max", type=count, default=100_000,
                    help="largest N given to faiss IndexBinaryHash (d <= 4 only; default 100k)")
    ap.add_argument("--brute-sample", type=count, default=20_000)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per measurement")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    have_faiss = ensure_faiss()
    faiss_ds = {int(x) for x in args.faiss_distances.split(",")}
    results = []
    print(f"threads={args.threads}  (time in s; B/hash = working memory of our search)")
    for n in map(count, args.sizes.split(",")):
        for kind in args.kinds.split(","):
            for d in map(int, args.distances.split(",")):
                base = {"kind": kind, "n": n, "d": d, "threads": args.threads}
                row = {**base, "ours": run({**base, "what": "ours"}, args.timeout)}
                if have_faiss and n <= args.faiss_max and d in faiss_ds:
                    nhash = 3 if d <= 8 else 4
                    row["faiss_multihash"] = run(
                        {**base, "what": "faiss-multihash", "nhash": nhash}, args.timeout)
                    if d <= 4 and n <= args.faiss_hash_max:
                        row["faiss_hash"] = run({**base, "what": "faiss-hash", "b": 16},
                                                args.timeout)
                sample = min(n, args.brute_sample)
                row["brute"] = run({**base, "what": "brute", "sample": sample}, args.timeout)
                results.append(row)
                print(line(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


def line(r: dict) -> str:
    o = r["ours"]
    head = f"{r['kind']:>9} N={r['n']:>9,} d={r['d']:>2}: "
    if "error" in o:
        return head + f"ours {o['error']}"
    s = (f"ours {o['seconds']:7.2f}s {o['pairs']:>11,} pairs "
         f"{o['bytes_per_hash']:5.1f} B/hash")
    for name in ("faiss_multihash", "faiss_hash"):
        f = r.get(name)
        if f is None:
            continue
        if "error" in f:
            s += f" | {name} {f['error']}"
            continue
        same = "same pairs" if (f["pairs"], f["digest"]) == (o["pairs"], o["digest"]) else \
            f"DIFFERENT pairs ({f['pairs']:,})"
        s += f" | {name} {f['seconds']:.2f}s ×{f['seconds'] / o['seconds']:.1f} {same}"
    b = r.get("brute")
    if b and "error" not in b:
        est = b["seconds"] * (r["n"] / b["sample"]) ** 2
        s += (f" | numpy brute {b['sample']:,}: {b['seconds']:.2f}s "
              f"({'equal' if b['equal_to_ours'] else 'NOT EQUAL'}), est. full {est:,.0f}s "
              f"×{est / o['seconds']:,.0f}")
    return head + s


if __name__ == "__main__":
    main()
