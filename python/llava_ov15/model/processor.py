"""Image preprocessing, chat template and placeholder expansion (pure functions).

This is the one implementation shared by inference and the data loader:

* `smart_resize` / `preprocess_images`: Qwen2-VL image processing with LLaVA-OV-1.5 settings
  (patch 14, merge 2, temporal patch 1, CLIP mean/std). Pixels are resized with Pillow's bicubic
  filter on the uint8 image, scaled by 1/255 in float64, cast to float32 and normalised in float32
  (the same order of operations as transformers' PIL backend, so values match it bit-for-bit).
  Patches are emitted in 2×2 merge-window order: [Σ h·w, 3·14·14].
* `render_chat`: the Qwen2.5-VL chat template (one `<|image_pad|>` per image).
* `expand_image_tokens`: repeat each image's `<|image_pad|>` h·w/4 times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from llava_ov15.data.lengths import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS

IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
PATCH_SIZE = 14
MERGE_SIZE = 2
# The pixel limits are defined once, beside the length counter that packs with them.
MIN_PIXELS = DEFAULT_MIN_PIXELS
MAX_PIXELS = DEFAULT_MAX_PIXELS
EVAL_MIN_PIXELS = 200_704
DEFAULT_SYSTEM = "You are a helpful assistant."

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
SPECIAL_TOKENS = {  # published ids (REFERENCE §1)
    ENDOFTEXT: 151643, IM_START: 151644, IM_END: 151645, VISION_START: 151652,
    VISION_END: 151653, IMAGE_PAD: 151655, VIDEO_PAD: 151656,
}


def smart_resize(height: int, width: int, factor: int = PATCH_SIZE * MERGE_SIZE,
                 min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Target size: both sides multiples of `factor`, area within [min, max], aspect kept.

    Python's round() (ties to even) is part of the spec: it decides the grid of tie cases.
    As in transformers (and unlike qwen_vl_utils) the first rounding is not clamped to `factor`:
    a side under factor/2 rounds to 0, which sends the image to the min_pixels branch.
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio over 200: {height}x{width}")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def num_image_tokens(height: int, width: int, min_pixels: int = MIN_PIXELS,
                     max_pixels: int = MAX_PIXELS) -> int:
    """LLM tokens (merged) for an image of this size: h̄·w̄ / 28²."""
    h, w = smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
    return (h // PATCH_SIZE) * (w // PATCH_SIZE) // MERGE_SIZE**2


def patchify(chw: np.ndarray, patch: int = PATCH_SIZE, merge: int = MERGE_SIZE) -> np.ndarray:
    """[C, H, W] -> [H/p·W/p, C·p·p] in (h/m, w/m, m, m) window order, channel-major per patch."""
    c, hh, ww = chw.shape
    gh, gw = hh // patch, ww // patch
    x = chw.reshape(c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, m, m, C, p, p)
    return np.ascontiguousarray(x).reshape(gh * gw, c * patch * patch)


def preprocess_image(image: Image.Image | np.ndarray, min_pixels: int = MIN_PIXELS,
                     max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One image -> (patches [h·w, 588] float32, (1, h, w) grid in patches)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    h, w = smart_resize(image.height, image.width, min_pixels=min_pixels, max_pixels=max_pixels)
    if (image.height, image.width) != (h, w):
        image = image.resize((w, h), resample=Image.Resampling.BICUBIC)
    x = (np.asarray(image).astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(IMAGE_MEAN, np.float32)) / np.asarray(IMAGE_STD, np.float32)
    patches = patchify(x.transpose(2, 0, 1))
    return patches, (1, h // PATCH_SIZE, w // PATCH_SIZE)


def preprocess_images(images: Sequence[Image.Image | np.ndarray], min_pixels: int = MIN_PIXELS,
                      max_pixels: int = MAX_PIXELS) -> tuple[torch.Tensor, torch.Tensor]:
    """Images -> (pixel_values [Σ h·w, 588] float32, image_grid_thw [n, 3] int64)."""
    if not images:
        return torch.zeros(0, 3 * PATCH_SIZE**2), torch.zeros(0, 3, dtype=torch.long)
    out = [preprocess_image(im, min_pixels, max_pixels) for im in images]
    pv = torch.from_numpy(np.concatenate([p for p, _ in out]))
    grid = torch.tensor([g for _, g in out], dtype=torch.long)
    return pv, grid


# ---- chat template ---------------------------------------------------------------------------
def _content_parts(content: Any) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content)


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = False,
                default_system: str | None = DEFAULT_SYSTEM, add_vision_id: bool = False) -> str:
    """Qwen2.5-VL chat template.

    messages: [{"role": ..., "content": str | [{"type": "text", "text": ...},
    {"type": "image"}, ...]}]. A system turn with `default_system` is prepended when the first
    message is not a system message (pass None to omit it).
    """
    out = []
    n_img = 0
    for i, msg in enumerate(messages):
        if i == 0 and msg["role"] != "system" and default_system is not None:
            out.append(f"{IM_START}system\n{default_system}{IM_END}\n")
        out.append(f"{IM_START}{msg['role']}\n")
        for part in _content_parts(msg["content"]):
            kind = part.get("type")
            if kind == "image" or "image" in part or "image_url" in part:
                n_img += 1
                if add_vision_id:
                    out.append(f"Picture {n_img}: ")
                out.append(f"{VISION_START}{IMAGE_PAD}{VISION_END}")
            elif kind == "video" or "video" in part:
                out.append(f"{VISION_START}{VIDEO_PAD}{VISION_END}")
            elif "text" in part:
                out.append(part["text"])
        out.append(f"{IM_END}\n")
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
    return "".join(out)


def image_token_counts(grid_thw: torch.Tensor | Sequence[Sequence[int]],
                       merge_size: int = MERGE_SIZE) -> list[int]:
    return [int(t * h * w) // merge_size**2 for t, h, w in torch.as_tensor(grid_thw).tolist()]


def expand_image_tokens(text: str, grid_thw, merge_size: int = MERGE_SIZE) -> str:
    """Replace the i-th `<|image_pad|>` with h·w/4 copies (one per merged image token)."""
    counts = image_token_counts(grid_thw, merge_size)
    pieces = text.split(IMAGE_PAD)
    if len(pieces) - 1 != len(counts):
        raise ValueError(f"text has {len(pieces) - 1} image placeholders, got {len(counts)} images")
    out = [pieces[0]]
    for n, rest in zip(counts, pieces[1:], strict=True):
        out += [IMAGE_PAD * n, rest]
    return "".join(out)


def expand_image_token_ids(ids: Sequence[int], image_token_id: int,
                           counts: Sequence[int]) -> list[int]:
    """Token-level version of `expand_image_tokens` (for pre-tokenized prompts)."""
    out: list[int] = []
    it = iter(counts)
    for t in ids:
        if t == image_token_id:
            try:
                out += [t] * next(it)
            except StopIteration:
                raise ValueError("more image placeholders than images") from None
        else:
            out.append(t)
    if next(it, None) is not None:
        raise ValueError("fewer image placeholders than images")
    return out


class Processor:
    """Tokenizer (HF `tokenizers` tokenizer.json) + template + images -> model inputs."""

    def __init__(self, tokenizer, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS):
        self.tokenizer = tokenizer
        self.min_pixels, self.max_pixels = min_pixels, max_pixels

    @classmethod
    def from_pretrained(cls, path, **kw) -> Processor:
        from pathlib import Path

        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(Path(path) / "tokenizer.json")), **kw)

    def token_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def __call__(self, messages: Sequence[dict], images: Sequence[Image.Image] = (),
                 add_generation_prompt: bool = True) -> dict[str, Any]:
        pv, grid = preprocess_images(list(images), self.min_pixels, self.max_pixels)
        text = expand_image_tokens(render_chat(messages, add_generation_prompt), grid)
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return {"input_ids": ids, "pixel_values": pv if len(images) else None,
                "image_grid_thw": grid if len(images) else None, "text": text}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
