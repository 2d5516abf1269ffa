"""llava-ov15: an open toolchain for training LLaVA-OneVision-1.5-style vision-language models."""

from llava_ov15._native import __version__

__all__ = ["__version__"]
