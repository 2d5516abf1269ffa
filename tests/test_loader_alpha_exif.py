"""Preprocessing of transparent images (`alpha="white"|"drop"`) and EXIF-oriented images
(upright, as transformers' processor sees `ImageOps.exif_transpose`d images)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from llava_ov15.data import SampleProcessor, preprocess_images
from llava_ov15.data.preprocess import reference_pixel_values, reference_rgb, smart_resize


def hf_processor():
    from transformers import Qwen2VLImageProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Qwen2VLImageProcessor(temporal_patch_size=1, patch_size=14, merge_size=2,
                                     min_pixels=3136, max_pixels=2_560_000)


def hf_pixels(im: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = hf_processor()(images=[im], return_tensors="np")
    return out["pixel_values"], out["image_grid_thw"]


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def every_value_and_alpha() -> Image.Image:
    """280×252 RGBA (a multiple of 28: no resize) holding every (value, alpha) pair: red = v,
    green = 255 - v, blue = v ^ 0x5A, alpha = a."""
    idx = np.arange(280 * 252)
    v, a = (idx % 256).astype(np.uint8), ((idx // 256) % 256).astype(np.uint8)
    px = np.stack([v, 255 - v, v ^ 0x5A, a], axis=1).reshape(252, 280, 4)
    return Image.fromarray(px, "RGBA")


def test_pinned_transformers_composites_transparency_onto_white():
    """The default `alpha="white"` is what the pinned transformers does (5.x; 4.x dropped it)."""
    px = np.zeros((56, 56, 4), np.uint8)
    px[..., 0] = 200  # fully transparent red
    ref, _ = hf_pixels(Image.fromarray(px, "RGBA"))
    white, _ = hf_pixels(Image.new("RGB", (56, 56), (255, 255, 255)))
    dropped, _ = hf_pixels(Image.fromarray(px[..., :3], "RGB"))
    assert np.array_equal(ref, white) and np.abs(ref - dropped).max() > 3
    ours, _ = preprocess_images([encode(Image.fromarray(px, "RGBA"))])
    assert np.array_equal(ours, white)


@pytest.mark.parametrize("alpha", ["white", "drop"])
def test_alpha_modes_equal_pillow_for_every_value_and_alpha(alpha):
    im = every_value_and_alpha()
    data = encode(im)
    pv, grid = preprocess_images([data], alpha=alpha)
    ref, ref_grid = reference_pixel_values([data], alpha=alpha)
    assert np.array_equal(grid, ref_grid) and np.array_equal(pv, ref)
    if alpha == "white":
        hf, _ = hf_pixels(Image.open(io.BytesIO(data)))
        assert np.abs(pv - hf).max() <= 1e-5
    else:  # dropping alpha keeps the stored colour of transparent pixels
        hf, _ = hf_pixels(im.convert("RGB"))
        assert np.abs(pv - hf).max() <= 1e-5


def _transparent_variants() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (61, 83), dtype=np.uint8)
    alpha[:20] = 0
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    pal = Image.fromarray(rgb).quantize(16)
    key = Image.fromarray(rgb // 64 * 64)  # few colours, so the colour key hits many pixels
    return [("rgba", encode(rgba)),
            ("la", encode(Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA"))),
            ("palette-one-transparent", encode(pal, transparency=3)),
            ("palette-alpha-table", encode(pal, transparency=bytes([0, 128, 255, 40]))),
            ("rgb-colour-key", encode(key, transparency=(64, 128, 0))),
            ("webp-rgba", encode(rgba, "WEBP", lossless=True)),
            ("gif-transparent-index", encode(pal, "GIF", transparency=3))]


@pytest.mark.parametrize("alpha", ["white", "drop"])
@pytest.mark.parametrize("name,data", [pytest.param(n, d, id=n) for n, d in
                                       _transparent_variants()])
def test_transparent_layouts_follow_the_alpha_mode(name, data, alpha):
    pv, grid = preprocess_images([data], alpha=alpha)
    ref, ref_grid = reference_pixel_values([data], alpha=alpha)
    assert np.array_equal(grid, ref_grid)
    assert np.array_equal(pv, ref), (name, np.abs(pv - ref).max())
    if alpha == "white":  # and that is what the pinned transformers computes
        hf, _ = hf_pixels(Image.open(io.BytesIO(data)))
        assert np.abs(pv - hf).max() <= 1e-5, name


def test_bad_alpha_mode_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="alpha must be"):
        preprocess_images([encode(Image.new("RGB", (30, 30)))], alpha="black")
    with pytest.raises(ValueError, match="alpha must be"):
        SampleProcessor(tmp_path / "tokenizer.json", alpha="none")


def oriented(fmt: str, orientation: int) -> bytes:
    """A 97×41 picture (asymmetric, so every orientation differs) with EXIF orientation."""
    y, x = np.mgrid[0:41, 0:97]
    px = np.stack([x * 2, y * 6, (x * y) % 256], axis=2).astype(np.uint8)
    px[:8, :12] = (255, 0, 0)  # a red corner marks the stored top-left
    exif = Image.Exif()
    exif[0x0112] = orientation
    kw = {"quality": 95} if fmt == "JPEG" else {}
    return encode(Image.fromarray(px), fmt, exif=exif.tobytes(), **kw)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_before_resizing(fmt, orientation):
    data = oriented(fmt, orientation)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == orientation
    pv, grid = preprocess_images([data])
    hf, hf_grid = hf_pixels(upright)
    assert grid.tolist() == hf_grid.tolist()
    assert np.abs(pv - hf).max() <= 1e-5
    ref, ref_grid = reference_pixel_values([data])
    assert np.array_equal(pv, ref) and np.array_equal(grid, ref_grid)
    # Orientations 5-8 turn the 97×41 picture on its side: 41 wide, 97 high.
    h, w = smart_resize(*((97, 41) if orientation >= 5 else (41, 97)))
    assert grid[0, 1:].tolist() == [h // 14, w // 14] and h != w
    assert reference_rgb(data).size == upright.size


class _Decode(torch.utils.data.Dataset):
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return preprocess_images([self.data, self.data])[1]


def test_forked_workers_decode_after_the_parent_did():
    """A forked DataLoader worker must not wait on the parent's decode threads (which it does
    not have): this hung forever once the parent had preprocessed an image itself."""
    data = encode(Image.new("RGB", (300, 200), (10, 200, 30)), "PNG")
    preprocess_images([data, data])  # the parent starts its decode threads
    ctx = torch.multiprocessing.get_context("fork")
    loader = torch.utils.data.DataLoader(_Decode(data), batch_size=None, num_workers=2,
                                         multiprocessing_context=ctx, timeout=60)
    assert [g.tolist() for g in loader] == [[[1, 14, 22]] * 2] * 4
