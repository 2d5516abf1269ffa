"""Full preprocessing (encoded image → `pixel_values` + `image_grid_thw`) on the same images:
`llava_ov15.data.preprocess_images` (Rust) vs transformers' `Qwen2VLImageProcessor`
(its PIL backend here, fed `Image.open` of the same bytes, as a training pipeline does).

    python benches/preprocess.py [--images 64] [--max-pixels 2560000]

Prints images/s for both, with our Rust path both single-call-per-image (1 thread's worth of
work at a time) and batched (rayon over the machine's cores), and the ratios from this run.
"""

from __future__ import annotations

import argparse
import io
import os
import time
import warnings

import numpy as np
from PIL import Image


def images(n: int) -> list[bytes]:
    from llava_ov15.demo.corpus import load_photos

    rng = np.random.default_rng(0)
    photos = list(load_photos().values())
    out = []
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        ch, cw = int(rng.integers(h // 2, h + 1)), int(rng.integers(w // 2, w + 1))
        im = Image.fromarray(p[:ch, :cw]).resize((cw * 2, ch * 2), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--min-pixels", type=int, default=3136)
    ap.add_argument("--max-pixels", type=int, default=2_560_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from transformers import Qwen2VLImageProcessor

    from llava_ov15.data import preprocess_images

    data = images(args.images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proc = Qwen2VLImageProcessor(temporal_patch_size=1, patch_size=14, merge_size=2,
                                     min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    kw = dict(min_pixels=args.min_pixels, max_pixels=args.max_pixels)

    def hf():
        for b in data:
            proc(images=[Image.open(io.BytesIO(b))], return_tensors="np")

    def ours_each():
        for b in data:
            preprocess_images([b], **kw)

    def ours_batch():
        preprocess_images(data, **kw)

    def best(fn):
        fn()
        return min(_t(fn) for _ in range(args.repeat))

    # Same output first.
    ref = proc(images=[Image.open(io.BytesIO(data[0]))], return_tensors="np")["pixel_values"]
    assert np.abs(preprocess_images([data[0]], **kw)[0] - ref).max() <= 1e-5
    t_hf, t_each, t_batch = best(hf), best(ours_each), best(ours_batch)
    n = len(data)
    print(f"{n} JPEGs, {type(proc).__name__}, min/max pixels {args.min_pixels}/{args.max_pixels}, "
          f"{os.cpu_count()} CPUs")
    print(f"transformers:             {n / t_hf:8.1f} images/s")
    print(f"llava_ov15, one per call: {n / t_each:8.1f} images/s  ratio {t_hf / t_each:.1f}x")
    print(f"llava_ov15, batched:      {n / t_batch:8.1f} images/s  ratio {t_hf / t_batch:.1f}x")


def _t(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
