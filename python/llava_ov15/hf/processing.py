"""transformers processor classes backed by the project's one image pipeline.

`LlavaOV15ImageProcessor` calls `llava_ov15.model.processor.preprocess_images` (smart_resize,
Pillow bicubic, rescale, CLIP normalisation, 2×2 merge-window patch order): the same values
`python -m llava_ov15.infer` feeds the model. It reads and writes the published
`preprocessor_config.json` (Qwen2-VL image processor settings); settings this pipeline does not
implement (another mean/std, patch size, resampling) are refused with a clear error rather than
silently ignored. Only `min_pixels`/`max_pixels` are free.

`LlavaOV15Processor` = that image processor + the directory's tokenizer + chat template; its
`__call__` expands every `<|image_pad|>` to the image's merged-token count with the project's
`expand_image_tokens` and tokenizes without added special tokens, as the infer CLI does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from transformers import AutoTokenizer, BatchFeature, ProcessorMixin
from transformers.image_processing_utils import BaseImageProcessor

from llava_ov15.model.hf_files import (
    CHAT_TEMPLATE,
    PREPROCESSOR_CONFIG,
    preprocessor_config,
)
from llava_ov15.model.processor import (
    IMAGE_PAD,
    MAX_PIXELS,
    MERGE_SIZE,
    MIN_PIXELS,
    VIDEO_PAD,
    expand_image_tokens,
    preprocess_images,
)

from .configuration import check_model_type

# What the published Qwen2-VL image-processor config says, i.e. what preprocess_images does.
_FIXED = {k: v for k, v in preprocessor_config().items()
          if k in ("image_mean", "image_std", "patch_size", "merge_size", "temporal_patch_size",
                   "resample", "rescale_factor", "do_rescale", "do_normalize", "do_resize",
                   "do_convert_rgb")}
# The transformers class name written for the published remote code (see __init__ on loading).
PUBLISHED_IMAGE_PROCESSOR = "Qwen2VLImageProcessor"
PUBLISHED_PROCESSOR = "Qwen2_5_VLProcessor"


def _flatten_images(images: Any) -> list:
    if images is None:
        return []
    if isinstance(images, (Image.Image, np.ndarray, str, Path)):
        return [images]
    out = []
    for im in images:
        out += _flatten_images(im)
    return out


def _as_pil(im: Any) -> Image.Image:
    if isinstance(im, Image.Image):
        return im
    if isinstance(im, np.ndarray):
        return Image.fromarray(im)
    if isinstance(im, (str, Path)):
        if str(im).startswith(("http://", "https://")):
            raise ValueError("image URLs are not fetched; pass a PIL image or a local path")
        from llava_ov15.model.pipeline import load_image

        return load_image(im)
    raise TypeError(f"unsupported image type {type(im).__name__}; use PIL, numpy or a path")


class LlavaOV15ImageProcessor(BaseImageProcessor):
    """Images -> `pixel_values` [Σ h·w, 588] float32 + `image_grid_thw` [n, 3]."""

    model_input_names = ["pixel_values", "image_grid_thw"]

    def __init__(self, min_pixels: int | None = None, max_pixels: int | None = None, **kwargs):
        size = kwargs.pop("size", None) or {}
        self.min_pixels = int(min_pixels or size.get("shortest_edge") or MIN_PIXELS)
        self.max_pixels = int(max_pixels or size.get("longest_edge") or MAX_PIXELS)
        for key in ("image_processor_type", "processor_class", "auto_map"):
            kwargs.pop(key, None)
        for key, value in kwargs.items():
            want = _FIXED.get(key)
            if want is not None and not _same(value, want):
                raise ValueError(f"{PREPROCESSOR_CONFIG}: {key}={value!r} is not supported; "
                                 f"this model's image processing uses {key}={want!r}")
        # Remaining keys (e.g. the published video settings) are kept for a faithful re-save.
        self._extra = {k: v for k, v in kwargs.items() if k not in _FIXED}
        super().__init__()
        self.merge_size = MERGE_SIZE

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> LlavaOV15ImageProcessor:
        """From a directory's preprocessor_config.json (defaults when it has none); `min_pixels`
        / `max_pixels` keyword arguments override the file."""
        path = Path(pretrained_model_name_or_path, kwargs.pop("subfolder", "") or "")
        if path.is_file():
            path = path.parent
        if not path.is_dir():
            raise ValueError(f"{path}: not a local model directory")
        f = path / PREPROCESSOR_CONFIG
        d = json.loads(f.read_text()) if f.is_file() else {}
        d.update({k: kwargs[k] for k in ("min_pixels", "max_pixels") if kwargs.get(k)})
        return cls(**d)

    def preprocess(self, images, min_pixels: int | None = None, max_pixels: int | None = None,
                   return_tensors: str | None = None, **kwargs) -> BatchFeature:
        pil = [_as_pil(im) for im in _flatten_images(images)]
        pv, grid = preprocess_images(pil, min_pixels or self.min_pixels,
                                     max_pixels or self.max_pixels)
        return BatchFeature({"pixel_values": pv, "image_grid_thw": grid},
                            tensor_type=return_tensors)

    __call__ = preprocess

    def to_dict(self) -> dict[str, Any]:
        """The published preprocessor_config.json layout (Qwen2-VL settings, our pixel limits)."""
        d = {**self._extra, **preprocessor_config()}
        d.update(min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                 size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
                 image_processor_type=PUBLISHED_IMAGE_PROCESSOR)
        return d


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b, strict=True)))
    if isinstance(b, float) or isinstance(a, float):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    return a == b


class LlavaOV15Processor(ProcessorMixin):
    """Chat template + image processor + tokenizer -> model inputs (`AutoProcessor` class)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.image_token, self.video_token = IMAGE_PAD, VIDEO_PAD
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> LlavaOV15Processor:
        """From a model directory: tokenizer files, preprocessor_config.json (optional: defaults),
        chat template (tokenizer_config.json / chat_template.jinja, else Qwen2.5-VL's)."""
        path = Path(pretrained_model_name_or_path)
        if not path.is_dir():
            raise ValueError(f"{path}: not a local model directory (download it first, e.g. "
                             "`hf download REPO --local-dir DIR`)")
        if (path / "config.json").is_file():
            check_model_type(path / "config.json")
        pix = {k: kwargs.pop(k) for k in ("min_pixels", "max_pixels") if k in kwargs}
        kwargs.pop("trust_remote_code", None)
        kwargs.pop("_from_auto", None)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        image_processor = LlavaOV15ImageProcessor.from_pretrained(path, **pix)
        template = None
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text()
        elif (path / "chat_template.json").is_file():
            template = json.loads((path / "chat_template.json").read_text()).get("chat_template")
        template = template or getattr(tokenizer, "chat_template", None) or CHAT_TEMPLATE
        return cls(image_processor, tokenizer, chat_template=template)

    def save_pretrained(self, save_directory, **kwargs) -> list[str]:
        """Tokenizer files, chat_template.jinja and the published preprocessor_config.json (which
        names transformers' Qwen2-VL classes, so the published remote-code snippet's
        `AutoProcessor` can read the directory without this package)."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(out)
        (out / "chat_template.jinja").write_text(self.chat_template or CHAT_TEMPLATE)
        d = {**self.image_processor.to_dict(), "processor_class": PUBLISHED_PROCESSOR}
        (out / PREPROCESSOR_CONFIG).write_text(json.dumps(d, indent=2) + "\n")
        return [str(out / PREPROCESSOR_CONFIG)]

    def __call__(self, images=None, text: str | Sequence[str] | None = None, videos=None,
                 return_tensors: str | None = None, padding: bool | str = True,
                 min_pixels: int | None = None, max_pixels: int | None = None,
                 **kwargs) -> BatchFeature:
        """`text` holds one `<|image_pad|>` per image (as the chat template renders it); images
        are assigned to placeholders in order, across the texts of a batch. Batches are
        left-padded (generation appends on the right)."""
        if videos is not None:
            raise ValueError("videos are not supported by this model implementation")
        if text is None:
            raise ValueError("text is required (render it with processor.apply_chat_template)")
        texts = [text] if isinstance(text, str) else list(text)
        flat = _flatten_images(images)
        n_slots = [t.count(IMAGE_PAD) for t in texts]
        if sum(n_slots) != len(flat):
            raise ValueError(f"the text has {sum(n_slots)} image placeholders but "
                             f"{len(flat)} images were given")
        data: dict[str, Any] = {}
        if flat:
            vision = self.image_processor(flat, min_pixels=min_pixels, max_pixels=max_pixels)
            grid = vision["image_grid_thw"]
            start = 0
            for i, n in enumerate(n_slots):
                texts[i] = expand_image_tokens(texts[i], grid[start:start + n])
                start += n
            data.update(vision)
        kwargs.setdefault("add_special_tokens", False)
        kwargs.setdefault("padding_side", "left")
        enc = self.tokenizer(texts, padding=padding, **kwargs)
        data.update(enc)
        return BatchFeature(data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_grid_thw"]
