"""Threshold calibration for `llava-pack dedup --max-distance`: planted near-duplicates of real
photos vs distinct photos, per phash Hamming distance 0..16.

    python benches/dedup_quality.py [--tile 160] [--variants 8] [--mode fast]

Distinct photos: non-overlapping tiles of every scikit-image colour/grey photo (tiles of one
photo are different pictures that share a style, which is where false pairs come from). Each
gets planted copies made with PIL: rescale 0.3–0.95, JPEG re-encode quality 40–95, crop 2–10 %,
brightness ±10 %, PNG↔JPEG, an added border. All are hashed with the build's phash
(`_native.phash_images`, the same code `llava-pack build` runs on the stored bytes). For each
distance d the table gives the recall of planted (original, copy) pairs within d and the number
of pairs of *distinct* photos within d (false pairs), per transform too.
"""

from __future__ import annotations

import argparse
import io
import random

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
          "retina", "colorwheel", "camera", "moon", "brick", "grass", "gravel", "coins", "clock",
          "page", "text")


def tiles(size: int) -> list[Image.Image]:
    from skimage import data

    out = []
    for name in PHOTOS:
        im = Image.fromarray(getattr(data, name)()).convert("RGB")
        for y in range(0, im.height - size + 1, size):
            for x in range(0, im.width - size + 1, size):
                out.append(im.crop((x, y, x + size, y + size)))
    return out


def encode(im: Image.Image, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def variant(im: Image.Image, kind: str, rng: random.Random) -> bytes:
    w, h = im.size
    if kind == "rescale":
        s = rng.uniform(0.3, 0.95)
        return encode(im.resize((max(8, int(w * s)), max(8, int(h * s))), Image.LANCZOS), "JPEG")
    if kind == "jpeg":
        return encode(im, "JPEG", rng.randint(40, 95))
    if kind == "crop":
        f = rng.uniform(0.02, 0.10)
        dx, dy = int(w * f / 2), int(h * f / 2)
        return encode(im.crop((dx, dy, w - dx, h - dy)), "JPEG")
    if kind == "brightness":
        return encode(ImageEnhance.Brightness(im).enhance(rng.uniform(0.9, 1.1)), "JPEG")
    if kind == "png":
        return encode(im, "PNG")
    if kind == "border":
        return encode(ImageOps.expand(im, border=max(2, w // 40), fill=(255, 255, 255)), "JPEG")
    raise ValueError(kind)


KINDS = ("rescale", "jpeg", "crop", "brightness", "png", "border")


def main() -> None:
    from llava_ov15 import _native

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tile", type=int, default=160, help="tile side in pixels (default 160)")
    ap.add_argument("--mode", choices=["fast", "exact"], default="fast",
                    help="phash mode, as `llava-pack build --phash` (default fast)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    photos = tiles(args.tile)
    blobs, owner, kind = [], [], []
    for i, im in enumerate(photos):
        blobs.append(encode(im, "JPEG", 95))
        owner.append(i)
        kind.append("original")
        for k in KINDS:
            blobs.append(variant(im, k, rng))
            owner.append(i)
            kind.append(k)
    hashes, errors = _native.phash_images(blobs, args.mode)
    assert not any(errors), [e for e in errors if e][:3]
    owner_a, kind_a = np.array(owner), np.array(kind)
    orig = np.nonzero(kind_a == "original")[0]
    print(f"{len(photos)} distinct photos ({args.tile}px tiles of {len(PHOTOS)} scikit-image "
          f"photos), {len(blobs) - len(photos)} planted copies; phash mode {args.mode}")
    # Planted pairs: each copy against its original.
    copies = np.nonzero(kind_a != "original")[0]
    planted = np.bitwise_count(hashes[copies] ^ hashes[orig[owner_a[copies]]])
    # False pairs: every pair of images of different photos (originals and copies alike), and
    # the stricter count over originals only.
    x = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    diff = owner_a[:, None] != owner_a[None, :]
    iu = np.triu_indices(len(hashes), 1)
    false_all = x[iu][diff[iu]]
    xo = x[np.ix_(orig, orig)]
    false_orig = xo[np.triu_indices(len(orig), 1)]
    head = f"{'d':>3} {'recall':>7} " + " ".join(f"{k:>10}" for k in KINDS)
    print(head + f" {'false pairs':>12} {'(originals)':>12}")
    for d in range(17):
        per = [np.mean(planted[kind_a[copies] == k] <= d) for k in KINDS]
        print(f"{d:>3} {np.mean(planted <= d):7.3f} " + " ".join(f"{p:10.3f}" for p in per)
              + f" {int(np.sum(false_all <= d)):>12} {int(np.sum(false_orig <= d)):>12}")
    print(f"pairs of distinct photos compared: {len(false_all):,} "
          f"({len(false_orig):,} among originals)")


if __name__ == "__main__":
    main()
