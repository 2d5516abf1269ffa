"""Rust perceptual hashes vs imagehash 4.3.2 + Pillow 12.3.0 on real photographs.

Every case must match `str(imagehash.phash(Image.open(...)))` / `dhash` bit for bit in
"exact" mode; "fast" mode (DCT-scaled JPEG decode) must stay within a few bits.
"""

import io
import random

import imagehash
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from llava_ov15 import _native

PHOTOS = {
    "astronaut": skdata.astronaut(),
    "chelsea": skdata.chelsea(),
    "coffee": skdata.coffee(),
    "rocket": skdata.rocket(),
    "camera": skdata.camera(),  # grayscale
}


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _crops(rng: random.Random, im: Image.Image, n: int):
    w, h = im.size
    shapes = [(rng.randint(8, 40), rng.randint(8, 40)) for _ in range(2)]  # tiny
    shapes += [(rng.randint(8, 30), rng.randint(150, h)), (rng.randint(150, w), rng.randint(8, 30))]
    # Height > 100 × width: Pillow's Image.resize then runs the vertical pass first.
    # (Sides of 1-2 px are left out: see the module doc of crates/packer/src/image/phash.rs.)
    if h > 420:
        shapes += [(rng.randint(3, 4), rng.randint(420, h))]
    shapes += [(rng.randint(33, w), rng.randint(33, h)) for _ in range(n)]
    for cw, ch in shapes:
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        yield im.crop((x, y, x + cw, y + ch))


def _cases():
    rng = random.Random(1234)
    out = []
    for name, arr in PHOTOS.items():
        im = Image.fromarray(arr)
        out.append((f"{name}.png", _save(im, "PNG")))
        for q, ss in [(95, 0), (75, 2), (50, 1), (85, 2)]:
            out.append((f"{name}.q{q}.ss{ss}.jpg", _save(im, "JPEG", quality=q, subsampling=ss)))
        out.append((f"{name}.progressive.jpg", _save(im, "JPEG", quality=80, progressive=True)))
        for i, c in enumerate(_crops(rng, im, 3)):
            ss = rng.choice([0, 1, 2])
            out.append(
                (
                    f"{name}.crop{i}.{c.size}.jpg",
                    _save(c, "JPEG", quality=rng.randint(40, 95), subsampling=ss),
                )
            )
            out.append((f"{name}.crop{i}.{c.size}.png", _save(c, "PNG")))
        if im.mode == "RGB":
            rgba = im.copy()
            rgba.putalpha(
                Image.fromarray((np.indices(arr.shape[:2]).sum(0) % 256).astype(np.uint8))
            )
            out.append((f"{name}.rgba.png", _save(rgba, "PNG")))
            out.append((f"{name}.palette.png", _save(im.quantize(64), "PNG")))
            out.append(
                (f"{name}.adaptive.gif", _save(im.convert("P", palette=Image.ADAPTIVE), "GIF"))
            )
            out.append((f"{name}.L.png", _save(im.convert("L"), "PNG")))
            out.append((f"{name}.cmyk.jpg", _save(im.convert("CMYK"), "JPEG", quality=90)))
            out.append((f"{name}.bmp", _save(im, "BMP")))
            out.append((f"{name}.lossless.webp", _save(im, "WEBP", lossless=True)))
        out.append(
            (
                f"{name}.I16.png",
                _save(
                    Image.fromarray((arr if arr.ndim == 2 else arr[..., 0]).astype(np.uint16) * 3),
                    "PNG",
                ),
            )
        )
    return out


CASES = _cases()
JPEG_PHOTOS = [(n, b) for n, b in CASES if n.endswith(".jpg") and ".crop" not in n]


@pytest.mark.parametrize("name,data", CASES, ids=[n for n, _ in CASES])
def test_exact_matches_imagehash(name, data):
    im = Image.open(io.BytesIO(data))
    got = _native.image_hashes(data, "exact", True)
    assert got["phash"] == str(imagehash.phash(im)), name
    assert got["dhash"] == str(imagehash.dhash(Image.open(io.BytesIO(data)))), name


@pytest.mark.parametrize("name,data", CASES, ids=[n for n, _ in CASES])
def test_probe_matches_pillow(name, data):
    im = Image.open(io.BytesIO(data))
    p = _native.probe_image(data)
    assert (p["width"], p["height"]) == im.size
    assert (
        p["format"]
        == {"JPEG": "jpeg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "WEBP": "webp"}[im.format]
    )
    assert p["orientation"] == 1 and p["animated"] is False


def test_fast_within_six_bits_of_exact():
    dists = []
    for name, data in JPEG_PHOTOS:
        exact = int(_native.image_hashes(data, "exact", False)["phash"], 16)
        fast = int(_native.image_hashes(data, "fast", False)["phash"], 16)
        d = bin(exact ^ fast).count("1")
        dists.append(d)
        assert d <= 6, (name, d)
    print(f"fast vs exact over {len(dists)} JPEGs: mean {np.mean(dists):.2f}, max {max(dists)}")


def test_rejects_raise_value_error():
    jpg = dict(JPEG_PHOTOS)["astronaut.q95.ss0.jpg"]
    with pytest.raises(ValueError, match="truncated"):
        _native.image_hashes(jpg[: len(jpg) // 2])
    with pytest.raises(ValueError, match="empty"):
        _native.probe_image(b"")
    with pytest.raises(ValueError, match="unrecognised"):
        _native.image_hashes(b"not an image at all")
    assert _native.image_hashes(jpg, "fast", False)["dhash"] is None
