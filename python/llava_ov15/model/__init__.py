"""LLaVA-OneVision-1.5 in plain PyTorch: config, RICE-ViT, merger, Qwen3, checkpoints, generation.

Heavy submodules (processor, generate, pipeline) import lazily so `import llava_ov15.model` stays
cheap; `Pipeline` / `load_pipeline` (checkpoint directory -> answers) resolve on first use.
"""

from .config import PRESETS, LlavaOV15Config, TextConfig, TokenIds, VisionConfig, get_config
from .llava import IGNORE_INDEX, LlavaOV15ForConditionalGeneration, ModelOutput

__all__ = [
    "IGNORE_INDEX",
    "PRESETS",
    "LlavaOV15Config",
    "LlavaOV15ForConditionalGeneration",
    "ModelOutput",
    "Pipeline",
    "TextConfig",
    "TokenIds",
    "VisionConfig",
    "get_config",
    "load_pipeline",
]


def __getattr__(name: str):
    if name in ("Pipeline", "load_pipeline"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
