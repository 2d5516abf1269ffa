"""LLaVA-OneVision-1.5 in plain PyTorch: config, RICE-ViT, merger, Qwen3, checkpoints, generation.

Heavy submodules (processor, generate) import lazily so `import llava_ov15.model` stays cheap.
"""

from .config import PRESETS, LlavaOV15Config, TextConfig, TokenIds, VisionConfig, get_config
from .llava import IGNORE_INDEX, LlavaOV15ForConditionalGeneration, ModelOutput

__all__ = [
    "IGNORE_INDEX",
    "PRESETS",
    "LlavaOV15Config",
    "LlavaOV15ForConditionalGeneration",
    "ModelOutput",
    "TextConfig",
    "TokenIds",
    "VisionConfig",
    "get_config",
]
