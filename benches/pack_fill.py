"""Packing benchmark: fill vs the lower bound and speed of the Rust packer, against a simple
Python best-fit-decreasing peer measured in the same run; plus token-length throughput from
real shards vs the transformers processor on the same samples.

    python benches/pack_fill.py                 # 1M + 10M lengths, both distributions
    python benches/pack_fill.py --sizes 1000000 --skip-lengths

Distributions (capacity --max-len, default 8192):
  vqa:     75% in 36-1023, 19.6% in 1024-2047, 5.4% in 2048-8192 tokens (uniform within)
  caption: image tokens of a random 256-2048 px image (each side) after smart_resize
           + 20-300 text tokens
Each Rust run happens in a fresh subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import bisect
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MIN_PIXELS, MAX_PIXELS = 3136, 2_560_000


def smart_resize_np(h: np.ndarray, w: np.ndarray, f: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised smart_resize (numpy rounds half to even, like Python); checked against the
    native function on a sample below."""
    hf, wf = h.astype(np.float64), w.astype(np.float64)
    hb, wb = np.round(hf / f) * f, np.round(wf / f) * f
    big = hb * wb > MAX_PIXELS
    beta = np.sqrt(hf * wf / MAX_PIXELS)
    hb = np.where(big, np.maximum(f, np.floor(hf / beta / f) * f), hb)
    wb = np.where(big, np.maximum(f, np.floor(wf / beta / f) * f), wb)
    small = ~big & (hb * wb < MIN_PIXELS)
    beta = np.sqrt(MIN_PIXELS / (hf * wf))
    hb = np.where(small, np.ceil(hf * beta / f) * f, hb)
    wb = np.where(small, np.ceil(wf * beta / f) * f, wb)
    return hb.astype(np.int64), wb.astype(np.int64)


def lengths(kind: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "vqa":
        u = rng.random(n)
        mid = np.where(u < 0.946, rng.integers(1024, 2048, n), rng.integers(2048, 8193, n))
        out = np.where(u < 0.75, rng.integers(36, 1024, n), mid)
        return out.astype(np.uint32)
    h, w = rng.integers(256, 2049, n), rng.integers(256, 2049, n)
    hb, wb = smart_resize_np(h, w)
    return (hb * wb // 784 + 2 + rng.integers(20, 301, n)).astype(np.uint32)


def python_bfd(lens: np.ndarray, cap: int) -> int:
    """The peer: best-fit decreasing in plain Python (bisect over sorted remaining space)."""
    remaining: list[int] = []  # sorted remaining capacities of open packs
    packs = 0
    for n in sorted(lens.tolist(), reverse=True):
        i = bisect.bisect_left(remaining, n)
        if i < len(remaining):
            r = remaining.pop(i) - n
        else:
            packs += 1
            r = cap - n
        bisect.insort(remaining, r)
    return packs


def rust_child(kind: str, n: int, cap: int) -> None:
    """Runs in a subprocess: pack and print a JSON line incl. this process's peak RSS."""
    from llava_ov15 import _native

    lens = lengths(kind, n)
    r = _native.pack_lengths(lens.tobytes(), cap)
    s = json.loads(r["summary"])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s.update(seconds=r["seconds"], peak_rss_mb=rss)
    print(json.dumps(s))


def bench_packing(sizes: list[int], cap: int, peer_max: int) -> None:
    from llava_ov15 import _native

    h = np.random.default_rng(1).integers(25, 5000, (2, 20000))
    hb, wb = smart_resize_np(h[0], h[1])
    for a, b, x, y in zip(h[0], h[1], hb, wb, strict=False):
        assert _native.smart_resize(int(a), int(b), 28, MIN_PIXELS, MAX_PIXELS) == (x, y)
    print(f"{'dist':8} {'n':>9} {'packs':>9} {'lower':>9} {'fill/LB':>8} {'<90%':>6} "
          f"{'rust s':>7} {'RSS MB':>7} {'peer packs':>10} {'peer s':>7} {'speedup':>8}")
    for n in sizes:
        for kind in ("vqa", "caption"):
            p = subprocess.run([sys.executable, __file__, "--child", kind, str(n), str(cap)],
                               capture_output=True, text=True, check=True)
            s = json.loads(p.stdout.strip().splitlines()[-1])
            peer = "-"
            peer_s = speed = "-"
            if n <= peer_max:
                lens = lengths(kind, n)
                t = time.perf_counter()
                peer = python_bfd(lens, cap)
                ps = time.perf_counter() - t
                peer_s, speed = f"{ps:.2f}", f"{ps / s['seconds']:.0f}x"
            print(f"{kind:8} {n:>9} {s['packs']:>9} {s['lower_bound']:>9} "
                  f"{100 * s['fill_efficiency']:>7.3f}% {s['packs_under_90']:>6} "
                  f"{s['seconds']:>7.2f} {s['peak_rss_mb']:>7.0f} {peer:>10} {peer_s:>7} "
                  f"{speed:>8}",
                  flush=True)


def bench_lengths(n: int, n_peer: int) -> None:
    """Token lengths from real shards (pass 1 of `llava-pack pack`, one worker) vs the
    transformers processor on the same samples (decode + Qwen2VLImageProcessorPil + template +
    tokenizer), as the REF packing step does."""
    from llava_ov15 import pack
    from llava_ov15.data.tokenizer import qwen_tokenizer_json
    from llava_ov15.demo.corpus import CorpusSpec, write_corpus

    tok = str(qwen_tokenizer_json())
    root = Path(tempfile.mkdtemp(prefix="pack-bench-"))
    corpus = write_corpus(root, CorpusSpec(n=n, seed=5, min_side=64, max_side=320,
                                           near_dup_fraction=0.0, multi_image_fraction=0.1,
                                           shapes=("caption", "conversations", "messages")))
    pack.build(corpus, root / "shards", phash="off", dedup="off", progress="quiet",
               samples_per_shard=1000)
    s = pack.pack(root / "shards", root / "packed", tok, workers=1, progress="quiet")
    ours = s["stats"]["throughput"]["samples_per_second_scan"]
    print(f"token lengths from shards, 1 worker: {ours:,.0f} samples/s "
          f"({s['stats']['source_samples']} samples)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import io
    import tarfile

    from PIL import Image
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from test_lengths import hf_length

    hf = (PreTrainedTokenizerFast(tokenizer_file=tok),
          Qwen2VLImageProcessorPil(temporal_patch_size=1, patch_size=14, merge_size=2,
                                   min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS))
    done = 0
    t = time.perf_counter()
    for tar in sorted((root / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
        for name, data in members.items():
            if not name.endswith(".json") or done >= n_peer:
                continue
            doc = json.loads(data)
            key = name[:-len(".json")]  # `member` holds the suffix (jpg, img0.png, ...)
            images = [Image.open(io.BytesIO(members[f"{key}.{im['member']}"])).convert("RGB")
                      for im in doc["images"]]
            hf_length(hf, doc, images)
            done += 1
    peer = done / (time.perf_counter() - t)
    print(f"transformers processor, same samples: {peer:,.0f} samples/s ({done} samples); "
          f"ratio {ours / peer:.0f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--max-len", type=int, default=8192)
    ap.add_argument("--peer-max", type=int, default=1_000_000,
                    help="run the Python peer only up to this many lengths")
    ap.add_argument("--skip-lengths", action="store_true")
    ap.add_argument("--length-samples", type=int, default=6000)
    a = ap.parse_args()
    if a.child:
        rust_child(a.child[0], int(a.child[1]), int(a.child[2]))
        return
    bench_packing([int(x) for x in a.sizes.split(",")], a.max_len, a.peer_max)
    if not a.skip_lengths:
        bench_lengths(a.length_samples, 300)


if __name__ == "__main__":
    main()
