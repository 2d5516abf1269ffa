"""Typed configuration for LLaVA-OneVision-1.5 and conversion from/to the HF `config.json`.

The published checkpoints carry a remote-code config of model_type `llavaonevision1_5` with a
`vision_config` (RICE-ViT, keys like `depth`, `embed_dim`, `num_heads`, `text_hidden_size`) and a
`text_config` (Qwen3 keys). We read that layout, keep what the model needs in plain dataclasses, and
write it back in the same layout so a saved directory looks like the published one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

MODEL_TYPE = "llavaonevision1_5"
ARCHITECTURE = "LLaVAOneVision1_5_ForConditionalGeneration"


@dataclass
class VisionConfig:
    """RICE-ViT (MLCD-style) vision tower plus the patch merger."""

    hidden_size: int = 1024  # `embed_dim` in the HF config
    num_layers: int = 24  # `depth`
    num_heads: int = 16
    intermediate_size: int = 4096
    patch_size: int = 14
    in_channels: int = 3
    temporal_patch_size: int = 1
    spatial_merge_size: int = 2
    layer_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    out_hidden_size: int = 4096  # merger output = LLM hidden size (`text_hidden_size`)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Flattened values per patch: C·T·P·P (588 for the published model)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclass
class TextConfig:
    """Qwen3 decoder."""

    vocab_size: int = 151936
    hidden_size: int = 4096
    num_layers: int = 36
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    intermediate_size: int = 12288
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False


@dataclass
class TokenIds:
    image: int = 151655
    video: int = 151656
    vision_start: int = 151652
    vision_end: int = 151653
    im_start: int = 151644
    im_end: int = 151645
    endoftext: int = 151643

    @property
    def eos(self) -> list[int]:
        return [self.im_end, self.endoftext]


@dataclass
class LlavaOV15Config:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    tokens: TokenIds = field(default_factory=TokenIds)
    # Keys from the source config.json that we do not model are kept so `to_hf_dict` round-trips.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    # ---- HF config.json ------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> LlavaOV15Config:
        mt = d.get("model_type", MODEL_TYPE)
        if mt not in (MODEL_TYPE, "llava_onevision1_5"):
            raise ValueError(f"config.json has model_type {mt!r}, expected {MODEL_TYPE!r}")
        v = d.get("vision_config", {}) or {}
        # Older configs put the text fields at the top level; text_config wins when present.
        t = {**{k: x for k, x in d.items() if k not in ("vision_config", "text_config")},
             **(d.get("text_config", {}) or {})}
        rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
        theta = t.get("rope_theta", rope.get("rope_theta", 1e6))
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", "mrope"):
            raise ValueError(f"unsupported text rope scaling {rope}")
        text = TextConfig(
            vocab_size=t.get("vocab_size", 151936),
            hidden_size=t["hidden_size"] if "hidden_size" in t else 4096,
            num_layers=t.get("num_hidden_layers", 36),
            num_heads=t.get("num_attention_heads", 32),
            num_kv_heads=t.get("num_key_value_heads") or t.get("num_attention_heads", 32),
            head_dim=t.get("head_dim")
            or t.get("hidden_size", 4096) // t.get("num_attention_heads", 32),
            intermediate_size=t.get("intermediate_size", 12288),
            rms_norm_eps=t.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            max_position_embeddings=t.get("max_position_embeddings", 32768),
            tie_word_embeddings=bool(t.get("tie_word_embeddings", False)),
        )
        vhid = v.get("embed_dim", v.get("hidden_size", 1024))
        if v.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported vision hidden_act {v.get('hidden_act')!r}")
        vision = VisionConfig(
            hidden_size=vhid,
            num_layers=v.get("depth", v.get("num_hidden_layers", 24)),
            num_heads=v.get("num_heads", v.get("num_attention_heads", 16)),
            intermediate_size=v.get("intermediate_size", 4 * vhid),
            patch_size=v.get("patch_size", 14),
            in_channels=v.get("in_channels", 3),
            temporal_patch_size=v.get("temporal_patch_size", 1),
            spatial_merge_size=v.get("spatial_merge_size", 2),
            layer_norm_eps=v.get("layer_norm_eps", 1e-5),
            out_hidden_size=v.get("text_hidden_size", text.hidden_size),
        )
        if vision.out_hidden_size != text.hidden_size:
            raise ValueError(
                f"vision_config.text_hidden_size {vision.out_hidden_size} != "
                f"text hidden_size {text.hidden_size}"
            )
        tok = TokenIds()
        tok = replace(
            tok,
            image=d.get("image_token_id", tok.image),
            video=d.get("video_token_id", tok.video),
            vision_start=d.get("vision_start_token_id", tok.vision_start),
            vision_end=d.get("vision_end_token_id", tok.vision_end),
            **(d.get("llava_ov15_token_ids") or {}),
        )
        known = {"vision_config", "text_config", "model_type", "image_token_id", "video_token_id",
                 "vision_start_token_id", "vision_end_token_id", "llava_ov15_token_ids"}
        extra = {k: x for k, x in d.items() if k not in known}
        # Sub-config keys we do not model (layer_types, sliding_window, initializer_range, ...)
        # are kept too, so a converted or trained model's config.json keeps them verbatim.
        for name, written in (("vision_config", _VISION_WRITTEN), ("text_config", _TEXT_WRITTEN)):
            rest = {k: x for k, x in (d.get(name) or {}).items() if k not in written}
            if rest:
                extra[name] = rest
        return cls(vision=vision, text=text, tokens=tok, extra=extra)

    def to_hf_dict(self) -> dict[str, Any]:
        v, t = self.vision, self.text
        d = dict(self.extra)
        d.setdefault("architectures", [ARCHITECTURE])
        d.update(
            model_type=MODEL_TYPE,
            image_token_id=self.tokens.image,
            video_token_id=self.tokens.video,
            vision_start_token_id=self.tokens.vision_start,
            vision_end_token_id=self.tokens.vision_end,
            # Not part of the published schema; lets tiny configs with remapped ids round-trip.
            llava_ov15_token_ids={k: x for k, x in asdict(self.tokens).items()
                                  if k in ("im_start", "im_end", "endoftext")},
            vocab_size=t.vocab_size,
            vision_config={
                **self._extra_sub("vision_config", num_hidden_layers=v.num_layers,
                                  num_attention_heads=v.num_heads),
                "model_type": "rice_vit", "depth": v.num_layers, "embed_dim": v.hidden_size,
                "hidden_size": v.hidden_size, "hidden_act": "gelu",
                "intermediate_size": v.intermediate_size, "num_heads": v.num_heads,
                "in_channels": v.in_channels, "patch_size": v.patch_size,
                "spatial_merge_size": v.spatial_merge_size,
                "temporal_patch_size": v.temporal_patch_size,
                "layer_norm_eps": v.layer_norm_eps, "text_hidden_size": v.out_hidden_size,
            },
            text_config={
                **self._extra_sub("text_config"),
                "model_type": "LLaVAOneVision1_5_text", "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_layers, "num_attention_heads": t.num_heads,
                "num_key_value_heads": t.num_kv_heads, "head_dim": t.head_dim,
                "hidden_act": "silu", "rms_norm_eps": t.rms_norm_eps, "rope_theta": t.rope_theta,
                "max_position_embeddings": t.max_position_embeddings,
                "tie_word_embeddings": t.tie_word_embeddings, "attention_bias": False,
            },
        )
        return d

    def _extra_sub(self, name: str, **aliases: Any) -> dict[str, Any]:
        """The kept keys of one sub-config. Alias keys and rope dicts get the modelled values, so
        a config changed after loading never carries a stale copy of a field."""
        out = dict(self.extra.get(name) or {})
        for k, x in aliases.items():
            if k in out:
                out[k] = x
        if name == "text_config":
            for k in ("rope_parameters", "rope_scaling"):
                if isinstance(out.get(k), dict) and "rope_theta" in out[k]:
                    out[k] = {**out[k], "rope_theta": self.text.rope_theta}
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path) -> LlavaOV15Config:
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        return cls.from_hf_dict(json.loads(p.read_text()))

    def save(self, directory: str | Path) -> None:
        Path(directory, "config.json").write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n")

    def __eq__(self, other: object) -> bool:  # extra is bookkeeping, not architecture
        if not isinstance(other, LlavaOV15Config):
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name)
                   for f in fields(self) if f.name != "extra")


# Sub-config keys `to_hf_dict` writes from the dataclasses; everything else is carried in `extra`.
_VISION_WRITTEN = frozenset({
    "model_type", "depth", "embed_dim", "hidden_size", "hidden_act", "intermediate_size",
    "num_heads", "in_channels", "patch_size", "spatial_merge_size", "temporal_patch_size",
    "layer_norm_eps", "text_hidden_size"})
_TEXT_WRITTEN = frozenset({
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps",
    "rope_theta", "max_position_embeddings", "tie_word_embeddings", "attention_bias"})


def _preset_8b() -> LlavaOV15Config:
    return LlavaOV15Config()


def _preset_4b() -> LlavaOV15Config:
    text = TextConfig(hidden_size=2560, intermediate_size=9728, rope_theta=5e6)
    return LlavaOV15Config(vision=VisionConfig(out_hidden_size=2560), text=text)


def tiny_config(vocab_size: int = 320, text_hidden: int = 64, vision_hidden: int = 32,
                layers: int = 2) -> LlavaOV15Config:
    """A few-hundred-kB model for tests; special tokens are remapped to the top of the vocab."""
    top = vocab_size - 1
    tokens = TokenIds(endoftext=top - 6, im_start=top - 5, im_end=top - 4,
                      vision_start=top - 3, vision_end=top - 2, image=top - 1, video=top)
    return LlavaOV15Config(
        vision=VisionConfig(hidden_size=vision_hidden, num_layers=layers, num_heads=2,
                            intermediate_size=2 * vision_hidden, out_hidden_size=text_hidden),
        text=TextConfig(vocab_size=vocab_size, hidden_size=text_hidden, num_layers=layers,
                        num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=2 * text_hidden,
                        rope_theta=1e4, max_position_embeddings=4096),
        tokens=tokens,
    )


PRESETS = {
    "llava-ov-1.5-8b": _preset_8b,
    "llava-ov-1.5-4b": _preset_4b,
    "tiny": tiny_config,
}


def get_config(name: str) -> LlavaOV15Config:
    try:
        return PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None
