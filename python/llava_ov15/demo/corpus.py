"""Synthetic-but-real corpora: random re-cuts of scikit-image's bundled photographs.

Used by the demo, the tests and `benches/compare_build.py`. Deterministic for a seed.
Needs scikit-image and Pillow (test/demo dependencies, not runtime ones).
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "moon",
    "page",
)

CAPTIONS = [
    "A photograph of {w}.",
    "An image showing {w} in detail.",
    "A close-up view of {w}.",
    "{w}, photographed under natural light.",
    "A picture that contains {w}.",
]
WORDS = {
    "astronaut": "an astronaut in a spacesuit",
    "chelsea": "a tabby cat",
    "coffee": "a cup of coffee",
    "rocket": "a rocket on its launch pad",
    "hubble_deep_field": "distant galaxies",
    "immunohistochemistry": "stained tissue",
    "retina": "a human retina",
    "camera": "a man with a camera",
    "moon": "the lunar surface",
    "page": "a page of printed text",
}


def load_photos() -> dict[str, np.ndarray]:
    from skimage import data

    out = {}
    for name in PHOTOS:
        img = getattr(data, name)()
        if img.dtype != np.uint8:
            img = (255 * (img.astype(np.float64) / max(1, img.max()))).astype(np.uint8)
        out[name] = img
    return out


@dataclass
class CorpusSpec:
    n: int = 200
    seed: int = 0
    min_side: int = 256
    max_side: int = 2048
    png_fraction: float = 0.05
    near_dup_fraction: float = 0.10
    multi_image_fraction: float = 0.0
    text_only_fraction: float = 0.0
    shapes: tuple[str, ...] = ("caption",)


def _crop_resize(rng: random.Random, img: np.ndarray, spec: CorpusSpec):
    from PIL import Image

    h, w = img.shape[:2]
    ch = rng.randint(max(16, h // 3), h)
    cw = rng.randint(max(16, w // 3), w)
    y, x = rng.randint(0, h - ch), rng.randint(0, w - cw)
    crop = Image.fromarray(img[y : y + ch, x : x + cw])
    tw, th = rng.randint(spec.min_side, spec.max_side), rng.randint(spec.min_side, spec.max_side)
    return crop.resize((tw, th), Image.Resampling.BICUBIC)


def _encode(rng: random.Random, im, png: bool) -> tuple[bytes, str]:
    buf = io.BytesIO()
    if png:
        im.save(buf, format="PNG", compress_level=1)
        return buf.getvalue(), "png"
    im.save(buf, format="JPEG", quality=rng.randint(70, 95))
    return buf.getvalue(), "jpg"


def write_corpus(root: str | Path, spec: CorpusSpec) -> Path:
    """Write images under ``root/images`` and ``root/corpus.jsonl``; return the JSONL path."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(spec.seed)
    photos = load_photos()
    names = list(photos)
    made: list[tuple[str, object]] = []  # (photo name, PIL image) for near-duplicates
    lines = []
    for i in range(spec.n):
        shape = spec.shapes[i % len(spec.shapes)]
        n_img = 1
        r = rng.random()
        if r < spec.text_only_fraction and shape != "caption":
            n_img = 0
        elif r < spec.text_only_fraction + spec.multi_image_fraction:
            n_img = 2
        paths, subjects = [], []
        for j in range(n_img):
            if made and rng.random() < spec.near_dup_fraction:
                name, src = rng.choice(made)
                # A near-duplicate: the same picture at a slightly different size.
                im = src.resize((max(32, int(src.width * 0.9)), max(32, int(src.height * 0.9))))
            else:
                name = rng.choice(names)
                im = _crop_resize(rng, photos[name], spec)
                made.append((name, im))
                if len(made) > 64:
                    made.pop(0)
            data, ext = _encode(rng, im, rng.random() < spec.png_fraction)
            rel = f"images/{i:07d}_{j}.{ext}"
            (root / rel).write_bytes(data)
            paths.append(rel)
            subjects.append(WORDS[name])
        text = rng.choice(CAPTIONS).format(w=" and ".join(subjects) or "nothing in particular")
        rec: dict = {"id": f"demo-{i:07d}"}
        if shape == "caption":
            rec.update(image=paths[0] if len(paths) == 1 else paths, caption=text)
        elif shape == "conversations":
            tags = "<image>\n" * len(paths)
            rec["conversations"] = [
                {"from": "human", "value": f"{tags}Describe the picture."},
                {"from": "gpt", "value": text},
            ]
            if paths:
                rec["image"] = paths[0] if len(paths) == 1 else paths
        else:
            content = [{"type": "image"} for _ in paths] + [
                {"type": "text", "text": "What is this?"}
            ]
            rec["messages"] = [
                {"role": "user", "content": content},
                {"role": "assistant", "content": text},
            ]
            rec["images"] = paths
        lines.append(json.dumps(rec))
    out = root / "corpus.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out
