"""megatron-core trainer for LLaVA-OV-1.5: stages 1 / 1.5 / 2, TP/PP/DP, packed rows, resume.

Entry point: `python -m llava_ov15.train --config configs/...yaml` (or under torchrun).
Importing this package is cheap; megatron-core is imported by the modules that need it.
"""

from .config import ConfigError, TrainConfig, load_config

__all__ = ["ConfigError", "TrainConfig", "load_config"]
