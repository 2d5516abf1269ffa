"""llava-ov15: an open toolchain for training LLaVA-OneVision-1.5-style vision-language models.

Subpackages import lazily so the pure-Python parts (model, eval) work without the native
extension; `llava_ov15.pack` needs it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
