"""transformers config classes for the published `llavaonevision1_5` layout.

The field names, sub-config names (`vision_config` of model_type `rice_vit`, `text_config` of
model_type `LLaVAOneVision1_5_text`) and `auto_map` are those of the published remote-code
checkpoints, so a config.json loads here and a config.json written here loads in the published
remote code. Defaults come from the project's dataclasses (`llava_ov15.model.config`), and the
network is always built from `to_ours()`, i.e. through `LlavaOV15Config.from_hf_dict`: there is
one reading of the published layout, not two.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import PreTrainedConfig

from llava_ov15.model.config import (
    ARCHITECTURE,
    MODEL_TYPE,
    LlavaOV15Config,
    TextConfig,
    TokenIds,
    VisionConfig,
)

# model_type spellings `LlavaOV15Config.from_hf_dict` accepts.
ACCEPTED_MODEL_TYPES = (MODEL_TYPE, "llava_onevision1_5")
# The published repos ship their own modelling code; a config.json that comes without an auto_map
# (a fresh model, a converted checkpoint) gets theirs, so the published code can load our output.
PUBLISHED_AUTO_MAP = {
    "AutoConfig": "configuration_llavaonevision1_5.Llavaonevision1_5Config",
    "AutoModel": f"modeling_llavaonevision1_5.{ARCHITECTURE}",
    "AutoModelForCausalLM": f"modeling_llavaonevision1_5.{ARCHITECTURE}",
}

_V, _T, _TOK = VisionConfig(), TextConfig(), TokenIds()


class LlavaOV15VisionConfig(PreTrainedConfig):
    """RICE-ViT + merger, published key names (`depth`, `embed_dim`, `text_hidden_size`, ...)."""

    model_type = "rice_vit"
    base_config_key = "vision_config"

    depth: int = _V.num_layers
    embed_dim: int = _V.hidden_size
    hidden_size: int = _V.hidden_size
    hidden_act: str = "gelu"
    intermediate_size: int = _V.intermediate_size
    num_heads: int = _V.num_heads
    in_channels: int = _V.in_channels
    patch_size: int = _V.patch_size
    spatial_merge_size: int = _V.spatial_merge_size
    temporal_patch_size: int = _V.temporal_patch_size
    initializer_range: float = 0.02
    layer_norm_eps: float = _V.layer_norm_eps
    text_hidden_size: int = _V.out_hidden_size


class LlavaOV15TextConfig(PreTrainedConfig):
    """Qwen3 decoder, published key names."""

    model_type = "LLaVAOneVision1_5_text"
    base_config_key = "text_config"

    vocab_size: int = _T.vocab_size
    hidden_size: int = _T.hidden_size
    intermediate_size: int = _T.intermediate_size
    num_hidden_layers: int = _T.num_layers
    num_attention_heads: int = _T.num_heads
    num_key_value_heads: int = _T.num_kv_heads
    head_dim: int = _T.head_dim
    hidden_act: str = "silu"
    max_position_embeddings: int = _T.max_position_embeddings
    initializer_range: float = 0.02
    rms_norm_eps: float = _T.rms_norm_eps
    use_cache: bool = True
    tie_word_embeddings: bool = _T.tie_word_embeddings
    rope_theta: float | int = _T.rope_theta
    attention_bias: bool = False

    def __post_init__(self, **kwargs):
        # The published configs carry `rope_scaling: null`; transformers 5 turns any `rope_scaling`
        # into `rope_parameters` with a FutureWarning. A null one means plain RoPE: drop it here
        # (it is written back on save). A real scaling is refused by `LlavaOV15Config`.
        if kwargs.get("rope_scaling", 0) is None:
            kwargs.pop("rope_scaling")
        super().__post_init__(**kwargs)


class LlavaOV15HFConfig(PreTrainedConfig):
    """Top-level config of model_type `llavaonevision1_5` (AutoConfig resolves to this class)."""

    model_type = MODEL_TYPE
    sub_configs_defaults = {"vision_config": LlavaOV15VisionConfig,
                            "text_config": LlavaOV15TextConfig}
    keys_to_ignore_at_inference = ["past_key_values"]

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = _TOK.image
    video_token_id: int = _TOK.video
    vision_start_token_id: int = _TOK.vision_start
    vision_end_token_id: int = _TOK.vision_end
    vocab_size: int | None = None
    tie_word_embeddings: bool | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # PreTrainedModel ties lm_head to the embedding from the top-level flag; mirror the
        # text config's so both views agree.
        if self.tie_word_embeddings is None:
            self.tie_word_embeddings = bool(self.text_config.tie_word_embeddings)
        if self.vocab_size is None:
            self.vocab_size = self.text_config.vocab_size

    # ---- the project's typed config <-> this one ----------------------------------------------
    def to_ours(self) -> LlavaOV15Config:
        """The network's config, read by the project's one adapter of the published layout."""
        return LlavaOV15Config.from_hf_dict(self.to_dict())

    @classmethod
    def from_ours(cls, cfg: LlavaOV15Config, **kwargs) -> LlavaOV15HFConfig:
        d = cfg.to_hf_dict()
        d.setdefault("auto_map", dict(PUBLISHED_AUTO_MAP))
        d.pop("model_type", None)
        return cls(**{**d, **kwargs})

    # ---- loading / saving ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        cfg_file = Path(pretrained_model_name_or_path, kwargs.get("subfolder") or "", "config.json")
        if cfg_file.is_file():  # local directory: refuse another model type up front
            check_model_type(cfg_file)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def to_diff_dict(self) -> dict[str, Any]:
        """What `save_pretrained` writes: every model field, as the published configs do.

        transformers' default drops values equal to *our* defaults; the published remote code has
        other defaults (e.g. a 4B text model), so an omitted field would change the model there.
        Only the generic PreTrainedConfig bookkeeping at its default values is left out.
        """
        return published_dict(self.to_dict())


_GENERIC = None


def _generic_defaults() -> dict[str, Any]:
    global _GENERIC
    if _GENERIC is None:
        _GENERIC = PreTrainedConfig().to_dict()
        for k in ("transformers_version", "architectures", "model_type", "dtype"):
            _GENERIC.pop(k, None)
    return _GENERIC


def published_dict(d: dict[str, Any]) -> dict[str, Any]:
    """A full config dict without transformers' generic bookkeeping at default values, with the
    published spellings (`architectures`, `torch_dtype` beside `dtype`, `rope_scaling: null`)."""
    generic = _generic_defaults()

    def clean(sub: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in sub.items() if not (k in generic and generic[k] == v)
               and not (k in ("architectures", "dtype") and v is None)}
        out.pop("_name_or_path", None)
        return out

    out = clean(d)
    # PreTrainedModel.save_pretrained records its own class name; the published one is what
    # other tools (the remote code, vLLM, SGLang) dispatch on, and Auto classes use model_type.
    out["architectures"] = [ARCHITECTURE]
    if out.get("dtype") is not None:
        out["torch_dtype"] = out["dtype"]
    for name in ("vision_config", "text_config"):
        if isinstance(out.get(name), dict):
            out[name] = clean(out[name])
            out[name].pop("transformers_version", None)
    text = out.get("text_config") or {}
    if text.get("rope_parameters") is None:
        text.pop("rope_parameters", None)
        text["rope_scaling"] = None
    return out


def check_model_type(config_json: str | Path) -> None:
    """A clear one-line error when a directory holds another model than LLaVA-OneVision-1.5."""
    try:
        mt = json.loads(Path(config_json).read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise ValueError(f"{config_json}: unreadable config.json ({e})") from None
    if mt not in ACCEPTED_MODEL_TYPES:
        raise ValueError(f"{config_json} has model_type {mt!r}; llava_ov15.hf loads "
                         f"{MODEL_TYPE!r} checkpoints (LLaVA-OneVision-1.5) only")
