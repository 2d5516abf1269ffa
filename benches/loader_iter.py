"""Raw iteration (image bytes + json, 1 worker / in process) over the same shards:
`llava_ov15.data.ShardIterable` (Rust mmap reader) vs `webdataset.WebDataset`.

    python benches/loader_iter.py [--samples 2000] [--repeat 3]

Builds a demo corpus of real photos with `llava_ov15.pack.build`, then iterates it with both
readers (no decoding on either side: both hand out the raw member bytes and the json), and
prints samples/s and the ratio from this one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def build(root: Path, n: int) -> Path:
    from llava_ov15 import pack
    from llava_ov15.demo.corpus import CorpusSpec, write_corpus

    corpus = write_corpus(root / "corpus", CorpusSpec(n=n, seed=0, max_side=512))
    out = root / "shards"
    pack.build(str(corpus), str(out), samples_per_shard=500, progress="quiet", dedup="off")
    return out


def ours(out: Path) -> tuple[int, int]:
    from llava_ov15.data import ShardIterable

    n = size = 0
    for s in ShardIterable(out, shuffle=False):
        n += 1
        size += len(s["json"]) + sum(v.nbytes for v in s["members"].values())
    return n, size


def webdataset_peer(out: Path) -> tuple[int, int]:
    import webdataset as wds

    urls = [str(p) for p in sorted(out.glob("*.tar"))]
    n = size = 0
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        n += 1
        size += sum(len(v) for k, v in s.items() if not k.startswith("__"))
    return n, size


def best(fn, out: Path, repeat: int) -> tuple[float, tuple[int, int]]:
    times, res = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        res = fn(out)
        times.append(time.perf_counter() - t)
    return min(times), res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = build(Path(tmp), args.samples)
        best(ours, out, 1), best(webdataset_peer, out, 1)  # warm the page cache
        t_ours, (n1, b1) = best(ours, out, args.repeat)
        t_wds, (n2, b2) = best(webdataset_peer, out, args.repeat)
        assert (n1, b1) == (n2, b2), ((n1, b1), (n2, b2))
        print(f"samples: {n1}, bytes: {b1 / 1e6:.1f} MB (page cache warm, best of {args.repeat})")
        print(f"llava_ov15 ShardIterable: {n1 / t_ours:10.0f} samples/s")
        print(f"webdataset.WebDataset:    {n2 / t_wds:10.0f} samples/s")
        print(f"ratio: {t_wds / t_ours:.1f}x")


if __name__ == "__main__":
    main()
