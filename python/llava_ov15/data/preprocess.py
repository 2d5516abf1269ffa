"""Model inputs from a shard sample: `pixel_values` / `image_grid_thw` and `input_ids` / `labels`.

One implementation, shared with the model's processor: the Rust `preprocess_images` (decode,
Pillow-exact BICUBIC resize to the `smart_resize` size, rescale, CLIP normalize, patchify in
2×2 merge-window order; bit-identical to transformers' `Qwen2VLImageProcessor`, which runs
its PIL backend when torchvision is absent) and the Rust `SampleTokenizer` (the packer's
`LengthCounter` template rendering, so lengths always equal the packer's).

Orientation: EXIF orientation is applied before resizing (as `ImageOps.exif_transpose` would),
so the grid is that of the upright image: width and height swap for orientations 5–8.

Transparency (`alpha=`): "white" (default) composites images with an alpha band or a
`transparency` entry (RGBA, LA, palette or colour-key PNG, GIF, WebP) onto opaque white, as the
pinned transformers 5.x `convert_to_rgb` does; "drop" ignores alpha, as transformers 4.x did
(the fully transparent pixels then show whatever colour they store, often black).

`reference_pixel_values` is a pure PIL/numpy restatement of the same pipeline, used by tests.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llava_ov15 import _native
from llava_ov15.model.processor import MAX_PIXELS, MIN_PIXELS  # one definition (HF's defaults)

ALPHA_MODES = ("white", "drop")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _as_array(b: Any) -> Any:
    return b if isinstance(b, (bytes, np.ndarray)) else np.frombuffer(b, dtype=np.uint8)


def _check_alpha(alpha: str) -> str:
    if alpha not in ALPHA_MODES:
        raise ValueError(f"alpha must be 'white' or 'drop', not {alpha!r}")
    return alpha


def preprocess_images(images: Sequence[Any], *, min_pixels: int = MIN_PIXELS,
                      max_pixels: int = MAX_PIXELS,
                      alpha: str = "white") -> tuple[np.ndarray, np.ndarray]:
    """Encoded images (bytes, uint8 arrays, memoryviews) → `(pixel_values float32 [Σ h·w, 588],
    image_grid_thw int64 [n, 3])`, upright (EXIF orientation applied), transparency per
    `alpha`. Decoding runs in Rust with the GIL released."""
    return _native.preprocess_images([_as_array(b) for b in images], min_pixels=min_pixels,
                                     max_pixels=max_pixels, alpha=_check_alpha(alpha))


# Settings that decide how a pack's lengths were measured: `from_pack` refuses overrides that
# contradict the manifest (the lengths would no longer match the recorded ones).
_MEASURED = ("min_pixels", "max_pixels", "system", "caption_prompt", "caption_format",
             "eos_token")


class SampleProcessor:
    """`transform` for `ShardDataset` / `ShardIterable`: sample dict → model inputs.

    Returns `input_ids`, `labels` (int64, unshifted, -100 = not trained), `seq_lens` (one per
    sub-sample of a pack, else one), `pixel_values`, `image_grid_thw`, `key`. The decoded
    images' grids are checked against the token counts (taken from the json's sizes).

    `caption_format`: "pretrain" (the reference's caption form: vision tags + caption + eos) or
    "chat" (the caption as a chat turn); `eos_token` None = the tokenizer's. For a
    `llava-pack pack` output use `SampleProcessor.from_pack(dir)`, which takes all of these
    from the pack's manifest.
    """

    def __init__(self, tokenizer: str | Path, *, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS, system: str | None = "You are a helpful assistant.",
                 caption_prompt: str = "", caption_format: str = "pretrain",
                 eos_token: str | None = None, alpha: str = "white") -> None:
        self.tokenizer_path = str(tokenizer)
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.alpha = _check_alpha(alpha)
        self.kw = dict(min_pixels=min_pixels, max_pixels=max_pixels, system=system,
                       caption_prompt=caption_prompt, caption_format=caption_format)
        if eos_token is not None:
            self.kw["eos_token"] = eos_token
        self._tok: _native.SampleTokenizer | None = None

    @classmethod
    def from_pack(cls, pack_dir: str | Path, **overrides: Any) -> SampleProcessor:
        """The processor that renders `pack_dir`'s samples exactly as `llava-pack pack`
        measured them: tokenizer (the pack's copy), pixel limits, caption format, prompts and
        eos token from its manifest. `overrides` are `SampleProcessor` arguments
        (`tokenizer=`, `alpha=`, ...); one that contradicts the manifest is a ValueError
        naming both values, and so is a `tokenizer` other than the one the pack used."""
        from llava_ov15.data.pack_manifest import PackInfo

        info = PackInfo.load(pack_dir)
        kw = info.sample_tokenizer_kwargs()
        for name in _MEASURED:
            if name in overrides and name in kw and overrides[name] != kw[name]:
                raise ValueError(f"{name}={overrides[name]!r} contradicts the pack's manifest "
                                 f"({info.path}/manifest.json: {name}={kw[name]!r})")
        tokenizer = overrides.pop("tokenizer", None)
        if tokenizer is None:
            if info.tokenizer_file is None:
                raise ValueError(f"{info.path} holds no copy of its tokenizer: pass "
                                 f"SampleProcessor.from_pack(..., tokenizer='tokenizer.json') "
                                 f"(sha256 {info.tokenizer_sha256})")
            tokenizer = info.tokenizer_file
        elif not info.tokenizer_matches(tokenizer):
            raise ValueError(f"tokenizer {tokenizer} is not the one {info.path} was packed with "
                             f"(sha256 {info.tokenizer_sha256})")
        return cls(tokenizer, **{**kw, **overrides})

    @property
    def tokenizer(self) -> _native.SampleTokenizer:
        if self._tok is None:  # built lazily: cheap to pickle into DataLoader workers
            self._tok = _native.SampleTokenizer(self.tokenizer_path, **self.kw)
        return self._tok

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tok": None}

    def __call__(self, sample: dict) -> dict:
        ids, labels, seq_lens, image_tokens = self.tokenizer.tokenize(sample["json"])
        images = sample["images"]
        if images:
            pv, grid = preprocess_images(images, min_pixels=self.min_pixels,
                                         max_pixels=self.max_pixels, alpha=self.alpha)
        else:
            pv, grid = np.zeros((0, 588), np.float32), np.zeros((0, 3), np.int64)
        got = (grid[:, 1] * grid[:, 2] // 4).tolist()
        if got != list(image_tokens):
            raise ValueError(f"decoded image grids give {got} tokens but the json sizes give "
                             f"{list(image_tokens)}")
        return {"key": sample["key"], "input_ids": torch.from_numpy(ids),
                "labels": torch.from_numpy(labels), "seq_lens": list(seq_lens),
                "pixel_values": torch.from_numpy(pv), "image_grid_thw": torch.from_numpy(grid)}


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """REFERENCE §2, in Python (reference path only; the loader uses the Rust one)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError("absolute aspect ratio must be smaller than 200")
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def reference_rgb(data: bytes, alpha: str = "white") -> Any:
    """PIL reference of the loader's decode: `exif_transpose`, then transparency onto white
    (`alpha_composite`, as transformers 5.x `convert_to_rgb`) or dropped (`convert("RGB")`)."""
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(Image.open(io.BytesIO(bytes(data))))
    transparent = "A" in im.getbands() or im.info.get("transparency") is not None
    if _check_alpha(alpha) == "white" and transparent:
        im = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im
                                     ).convert("RGB")
    return im.convert("RGB")


def reference_pixel_values(images: Sequence[bytes], *, min_pixels: int = MIN_PIXELS,
                           max_pixels: int = MAX_PIXELS, patch: int = 14, merge: int = 2,
                           alpha: str = "white") -> tuple[np.ndarray, np.ndarray]:
    """Pure PIL/numpy path (tests only): open, upright, RGB per `alpha`, BICUBIC, rescale,
    normalize, patchify."""
    from PIL import Image

    out, grids = [], []
    for b in images:
        im = reference_rgb(b, alpha)
        h, w = smart_resize(im.height, im.width, patch * merge, min_pixels, max_pixels)
        arr = np.asarray(im.resize((w, h), Image.BICUBIC)).astype(np.float64) * (1 / 255)
        mean, std = np.array(CLIP_MEAN, np.float32), np.array(CLIP_STD, np.float32)
        x = (arr.astype(np.float32) - mean) / std
        gh, gw = h // patch, w // patch
        x = x.transpose(2, 0, 1).reshape(3, gh // merge, merge, patch, gw // merge, merge, patch)
        out.append(x.transpose(1, 4, 2, 5, 0, 3, 6).reshape(gh * gw, 3 * patch * patch))
        grids.append([1, gh, gw])
    return np.concatenate(out), np.array(grids, np.int64)
