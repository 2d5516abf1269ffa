"""Checkpoint directory -> answers: model + processor + stop tokens in one object.

The one loading/generation path shared by `python -m llava_ov15.infer` and the evaluation
adapter (`llava_ov15.eval.model_adapter`)::

    pipe = load_pipeline("DIR", device="cuda", dtype="bfloat16")
    pipe.generate([{"role": "user", "content": [{"type": "image", "image": pil},
                                                {"type": "text", "text": "What is this?"}]}],
                  max_new_tokens=64)

DIR is an HF-layout directory: config.json, model.safetensors (or shards +
model.safetensors.index.json), tokenizer.json, optionally generation_config.json (its
`eos_token_id` adds stop tokens). The prompt is rendered with the built-in Qwen2.5-VL chat
template (`processor.render_chat`); a chat template shipped with the checkpoint is not read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps

from .generate import GenerationConfig, GenerationOutput, generate
from .processor import (
    IM_END,
    IM_START,
    IMAGE_PAD,
    MAX_PIXELS,
    MIN_PIXELS,
    VISION_END,
    VISION_START,
    Processor,
)

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
           "fp16": torch.float16, "half": torch.float16, "float32": torch.float32,
           "fp32": torch.float32, "float": torch.float32}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """None / "auto" -> None (keep the checkpoint's dtype); names like "bfloat16", "bf16"."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use auto or one of {sorted(_DTYPES)}") from None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class ImageLoadError(ValueError):
    """An image file that is missing, truncated or not an image (one-line message)."""


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file, upright (EXIF orientation applied, as transformers'
    `load_image` does). Decoding here, not lazily later, turns a truncated file into a clear
    error instead of a failure in the middle of preprocessing."""
    p = Path(path)
    if not p.is_file():
        raise ImageLoadError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
    try:
        with Image.open(p) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except Image.UnidentifiedImageError:
        raise ImageLoadError(f"{p}: not an image file (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # Pillow reports truncated/corrupt data as OSError (sometimes SyntaxError/ValueError).
        raise ImageLoadError(f"{p}: cannot decode the image, truncated or damaged ({e})") from None


def message_images(messages: Sequence[dict]) -> list[Image.Image]:
    """Images of the `{"type": "image", "image": ...}` parts, in order (PIL, array or path)."""
    out = []
    for msg in messages:
        content = msg["content"]
        if isinstance(content, str):
            continue
        for part in content:
            if "image_url" in part or part.get("type") == "video" or "video" in part:
                raise ValueError("only {'type': 'image', 'image': PIL/array/path} parts are "
                                 "supported")
            if part.get("type") != "image" and "image" not in part:
                continue
            im = part.get("image")
            if im is None:
                raise ValueError("image part without an 'image' value")
            if isinstance(im, str | Path):
                im = load_image(im)
            elif not isinstance(im, Image.Image):
                im = Image.fromarray(im)
            out.append(im)
    return out


class Pipeline:
    """A model with its processor (tokenizer, image settings) and stop tokens."""

    def __init__(self, model, processor: Processor, eos_token_ids: Sequence[int] | None = None):
        self.model, self.processor = model, processor
        tok = model.config.tokens
        self.eos_token_ids = sorted(set(tok.eos) | set(eos_token_ids or ()))
        expected = {IMAGE_PAD: tok.image, IM_START: tok.im_start, IM_END: tok.im_end,
                    VISION_START: tok.vision_start, VISION_END: tok.vision_end}
        bad = {s: (processor.token_id(s), i) for s, i in expected.items()
               if processor.token_id(s) != i}
        if bad:
            raise ValueError("tokenizer and config disagree on special token ids "
                             "(token: (tokenizer, config)): " + repr(bad))

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None, min_pixels: int = MIN_PIXELS,
                        max_pixels: int = MAX_PIXELS) -> Pipeline:
        from .checkpoint import load_pretrained

        directory = Path(path)
        if not (directory / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{directory}: no tokenizer.json")
        model = load_pretrained(directory, dtype=resolve_dtype(dtype),
                                device=device or default_device())
        proc = Processor.from_pretrained(directory, min_pixels=min_pixels, max_pixels=max_pixels)
        eos: list[int] = []
        gen_cfg = directory / "generation_config.json"
        if gen_cfg.is_file():
            e = json.loads(gen_cfg.read_text()).get("eos_token_id")
            eos = [e] if isinstance(e, int) else list(e or ())
        return cls(model, proc, eos)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.lm_head.weight.dtype

    def encode(self, messages: Sequence[dict]) -> dict[str, Any]:
        """Chat messages -> processor output (plus the images), tensors on the model's device."""
        images = message_images(messages)
        enc = self.processor(messages, images)
        if enc["pixel_values"] is not None:
            enc["pixel_values"] = enc["pixel_values"].to(self.device)
            enc["image_grid_thw"] = enc["image_grid_thw"].to(self.device)
        return enc

    def generation_config(self, **kw) -> GenerationConfig:
        kw.setdefault("eos_token_ids", self.eos_token_ids)
        return GenerationConfig(**kw)

    def run(self, enc: dict[str, Any], config: GenerationConfig,
            stream: Callable[[int, int], None] | None = None) -> GenerationOutput:
        return generate(self.model, [enc["input_ids"]], enc["pixel_values"],
                        enc["image_grid_thw"], config, stream=stream,
                        decode=self.processor.decode)

    def generate(self, messages: Sequence[dict], *, max_new_tokens: int = 128,
                 do_sample: bool = False, **kw) -> str:
        """The new text only (special tokens skipped). `kw`: other GenerationConfig fields."""
        cfg = self.generation_config(max_new_tokens=max_new_tokens, do_sample=do_sample, **kw)
        return self.run(self.encode(messages), cfg).texts[0]


def load_pipeline(path: str | Path, *, device: str | torch.device | None = None,
                  dtype: str | torch.dtype | None = None, min_pixels: int = MIN_PIXELS,
                  max_pixels: int = MAX_PIXELS) -> Pipeline:
    return Pipeline.from_pretrained(path, device=device, dtype=dtype, min_pixels=min_pixels,
                                    max_pixels=max_pixels)
