"""transformers integration: `import llava_ov15.hf` registers the model with the Auto classes.

After the import, on a checkpoint directory of model_type `llavaonevision1_5` (published layout
or written by this project), with no `trust_remote_code`::

    AutoConfig.from_pretrained(DIR)                   -> LlavaOV15HFConfig
    AutoModelForCausalLM.from_pretrained(DIR)         -> LlavaOV15ForConditionalGenerationHF
    AutoModelForImageTextToText / AutoModel           -> LlavaOV15ForConditionalGenerationHF
    AutoProcessor.from_pretrained(DIR)                -> LlavaOV15Processor
    AutoImageProcessor.from_pretrained(DIR)           -> LlavaOV15ImageProcessor

Our classes also win over the directory's remote code when `trust_remote_code=True` is passed
(transformers prefers an explicitly registered local class).

Only this module registers; `import llava_ov15` does not, because registering needs transformers
and torch (seconds of import time) and the package root must stay cheap for the data tools.

Processor resolution: transformers picks a processor by the class *name* written in the
directory's processor files (`processor_class`, `image_processor_type`) before it looks at the
model_type, and the published files (and the ones we write, so the published remote code keeps
working on our directories) name transformers' Qwen2-VL classes. Registration alone would then
hand back those classes, not the project's image pipeline; so `AutoProcessor.from_pretrained`
and `AutoImageProcessor.from_pretrained` are wrapped to route a *local directory whose
config.json has model_type `llavaonevision1_5`* to our classes. Every other directory or hub id
goes to transformers unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import transformers

# The config/model classes use transformers 5's dataclass configs and init helpers.
if int(transformers.__version__.split(".")[0]) < 5:
    raise ImportError(f"llava_ov15.hf needs transformers>=5 (tested with 5.23.0), found "
                      f"{transformers.__version__}: pip install 'transformers>=5,<6'")

from transformers import (  # noqa: E402
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from llava_ov15.model.config import MODEL_TYPE

from .configuration import (
    ACCEPTED_MODEL_TYPES,
    PUBLISHED_AUTO_MAP,
    LlavaOV15HFConfig,
    LlavaOV15TextConfig,
    LlavaOV15VisionConfig,
)
from .modeling import LlavaOV15ForConditionalGenerationHF, LlavaOV15PreTrainedModel
from .processing import LlavaOV15ImageProcessor, LlavaOV15Processor

__all__ = [
    "PUBLISHED_AUTO_MAP",
    "LlavaOV15ForConditionalGenerationHF",
    "LlavaOV15HFConfig",
    "LlavaOV15ImageProcessor",
    "LlavaOV15PreTrainedModel",
    "LlavaOV15Processor",
    "LlavaOV15TextConfig",
    "LlavaOV15VisionConfig",
    "is_ours",
]


def is_ours(path, subfolder: str = "", config=None) -> bool:
    """A local model directory (or config object) of model_type `llavaonevision1_5`."""
    if isinstance(config, LlavaOV15HFConfig):
        return True
    f = Path(str(path), subfolder or "", "config.json")
    if not f.is_file():
        return False
    try:
        return json.loads(f.read_text()).get("model_type") in ACCEPTED_MODEL_TYPES
    except (OSError, ValueError):
        return False


def _route(auto_cls, ours) -> None:
    """Send `auto_cls.from_pretrained` on our directories to `ours.from_pretrained`."""
    original = auto_cls.from_pretrained.__func__
    if getattr(original, "_llava_ov15_routed", False):  # module reloaded: wrap once
        return

    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        if is_ours(pretrained_model_name_or_path, kwargs.get("subfolder", ""),
                   kwargs.get("config")):
            for key in ("config", "trust_remote_code", "use_fast", "backend"):
                kwargs.pop(key, None)
            return ours.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        return original(cls, pretrained_model_name_or_path, *args, **kwargs)

    from_pretrained._llava_ov15_routed = True
    from_pretrained.__doc__ = original.__doc__
    auto_cls.from_pretrained = classmethod(from_pretrained)


def register() -> None:
    """Idempotent: safe to call again (e.g. after another library registered the same name)."""
    AutoConfig.register(MODEL_TYPE, LlavaOV15HFConfig, exist_ok=True)
    for auto in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText):
        auto.register(LlavaOV15HFConfig, LlavaOV15ForConditionalGenerationHF, exist_ok=True)
    AutoProcessor.register(LlavaOV15HFConfig, LlavaOV15Processor, exist_ok=True)
    AutoImageProcessor.register(
        LlavaOV15HFConfig, image_processor_classes={"pil": LlavaOV15ImageProcessor,
                                                    "torchvision": LlavaOV15ImageProcessor},
        exist_ok=True)
    _route(AutoProcessor, LlavaOV15Processor)
    _route(AutoImageProcessor, LlavaOV15ImageProcessor)


register()
