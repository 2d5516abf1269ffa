"""Typed trainer config: dataclasses loaded from YAML, `--set key=value` overrides, validation.

Everything is checked before any work starts: unknown keys (named with their full dotted path),
wrong types, and impossible parallel layouts (e.g. `parallel.tp` not dividing the attention heads).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """An invalid configuration; the message names the offending key."""


STAGES = ("1", "1.5", "2")
# Parameters that train in each stage (name prefixes in the megatron model; None = all).
STAGE_TRAINABLE: dict[str, list[str] | None] = {"1": ["vision.merger."], "1.5": None, "2": None}


@dataclass
class ModelSection:
    # llava_ov15.model.config.PRESETS; None = the architecture stored with `checkpoint.load`
    # (its llava_config.json), else `hf_checkpoint`'s config.json, else "tiny"
    preset: str | None = None
    text: dict[str, Any] = field(default_factory=dict)  # TextConfig field overrides
    vision: dict[str, Any] = field(default_factory=dict)  # VisionConfig field overrides
    tokens: dict[str, Any] = field(default_factory=dict)  # TokenIds overrides ("published" =
    # the real Qwen ids, e.g. for a tiny model trained on llava-pack shards)
    # Random init only: size the vocabulary to the tokenizer and take the special token ids
    # from it (what lets the tiny recipes train on any pack).
    fit_tokenizer: bool = False
    hf_checkpoint: str | None = None  # initialise from an HF directory (else random init)
    init_std: float = 0.02


@dataclass
class DataSection:
    # "synthetic" | "packed" (llava-pack shards via llava_ov15.data); None = "packed" when
    # data.path is given, else "synthetic"
    kind: str | None = None
    path: str | None = None  # packed shard directory (kind=packed)
    # For kind=packed, None = what the pack's manifest records (and a value given here must agree
    # with it): tokenizer (the file stored in the pack), seq_len (its --max-len), min/max_pixels,
    # caption_format, max_image_tokens.
    # "word" (test tokenizer), "qwen" (built offline) or a tokenizer.json; synthetic: "word"
    tokenizer: str | None = None
    seq_len: int | None = None  # row length; synthetic default SYNTHETIC_SEQ_LEN
    packed: bool = True  # False: one sample per row (stage 2 "not packed"), padded to seq_len
    micro_batch_size: int = 1  # packs (rows) per micro-batch
    num_workers: int = 0
    seed: int = 0
    # synthetic dataset
    image_sizes: list[int] = field(default_factory=lambda: [28, 84])  # min/max side in pixels
    caption_words: list[int] = field(default_factory=lambda: [3, 12])
    num_classes: int = 8
    num_packs: int | None = None  # synthetic dataset size (packs cycle); None = endless
    images_per_sample: int = 1
    min_pixels: int | None = None  # synthetic default: llava_ov15.model.processor.MIN_PIXELS
    max_pixels: int | None = None  # synthetic default: ....MAX_PIXELS
    caption_format: str | None = None  # packed only: how the pack renders captions
    max_image_tokens: int | None = None  # packed only: the pack's image-token cap per pack
    # Cap on merged vision tokens per micro-batch (None = no cap): the largest images of a
    # micro-batch over the cap are shrunk with smart_resize (never dropped). Also the starting
    # point of the lower cap a step retries with after a CUDA out-of-memory error.
    max_image_tokens_per_step: int | None = None


SYNTHETIC_SEQ_LEN = 128


@dataclass
class HardMiningSection:
    fraction: float = 0.1  # the hardest fraction of the samples seen (by recent loss)
    boost: float = 2.0  # each hard sample is drawn this many times (fractions drawn by seed)
    warmup_steps: int = 0  # no oversampling before this optimizer step
    ema: float = 0.0  # recent loss = ema·previous + (1-ema)·new; 0 = the last loss


@dataclass
class TrainSection:
    stage: str = "1"  # "1" alignment (adapter only), "1.5" mid-training, "2" instruct
    steps: int = 10
    global_batch_size: int = 1  # packs per optimizer step
    lr: float = 1e-4
    min_lr: float = 1e-6
    warmup_fraction: float = 0.002
    warmup_steps: int | None = None  # overrides warmup_fraction
    lr_decay_style: str = "cosine"
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-5
    clip_grad: float = 1.0
    seed: int = 1234
    loss: str = "pack_mean"  # "pack_mean" (reference) | "token_mean" (global token mean)
    bf16: bool = False
    # Activation recompute: "off" | "full" (every LLM layer and vision block re-run in backward)
    # | "selective" (attention core only). YAML true/false still mean full/off; validate()
    # turns them into those strings.
    recompute: str | bool = "off"
    # Output layer + cross entropy fused over chunks of this many labelled tokens, so the full
    # [tokens, vocab] logits never exist (8192 × 151,936 fp32 is ~5 GB); 0 = unfused logits.
    loss_chunk_tokens: int = 2048
    trainable: list[str] | None = None  # parameter-name prefixes; None = the stage's default
    exit_after_steps: int | None = None  # debug: deliver SIGTERM to ourselves after this step
    # Stage 1 image-text contrastive term (InfoNCE, learnable temperature) added to the LM loss
    # with this weight; 0 = off.
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.07  # initial temperature (CLIP's)
    # Stage 2 hard-sample mining: {fraction, boost, warmup_steps, ema}; None = off.
    hard_mining: HardMiningSection | None = None
    oom_retry: bool = True  # retry a step once with a lower image-token cap after CUDA OOM
    inject_oom_at_step: int | None = None  # debug/tests: raise an OOM in this step's 1st try


@dataclass
class ParallelSection:
    tp: int = 1
    pp: int = 1
    dp: int | None = None  # None = world_size / (tp·pp)
    distributed_optimizer: bool = True
    overlap_grad_reduce: bool = False
    # "auto" (TE thd on CUDA when installed, else flex on CUDA, else mask on CPU) | "te" |
    # "flex" (PyTorch FlexAttention, document mask) | "mask" (explicit block-diagonal mask)
    attention: str = "auto"


@dataclass
class CheckpointSection:
    dir: str | None = None
    save_interval: int = 0  # steps; 0 = only at the end / on SIGTERM
    save_on_exit: bool = True
    resume: bool = False  # continue from the latest checkpoint in `dir`
    # start over although `dir` holds checkpoints (they are deleted); else such a run refuses
    overwrite: bool = False
    load: str | None = None  # initialise model weights from a megatron checkpoint (convert output)
    sharding_type: str = "fully_reshardable"  # distributed optimizer layout on disk


@dataclass
class LogSection:
    dir: str | None = None  # metrics.jsonl and TensorBoard events
    interval: int = 1
    tensorboard: bool = True
    progress: str = "auto"  # "auto" | "bar" | "log" | "quiet"
    peak_tflops: float | None = None  # per device, for MFU; None = guess from the device


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---- model ---------------------------------------------------------------------------
    def model_config(self):
        """The model's architecture and token ids: the base (`checkpoint.load`'s stored
        llava_config.json, else `hf_checkpoint`, else `preset`) plus the model.* overrides."""
        from llava_ov15.model.config import (
            LlavaOV15Config,
            TextConfig,
            TokenIds,
            VisionConfig,
            get_config,
        )

        mc = stored_model_config(self.checkpoint.load) if self.checkpoint.load else None
        if mc is None and self.model.hf_checkpoint:
            mc = LlavaOV15Config.from_pretrained(self.model.hf_checkpoint)
        if mc is None:
            try:
                mc = get_config(self.model.preset or "tiny")
            except KeyError as e:
                raise ConfigError(f"model.preset: {e.args[0]}") from None
        text = dataclasses.replace(mc.text, **typed_fields(self.model.text, TextConfig,
                                                           "model.text."))
        vision = dataclasses.replace(mc.vision, **typed_fields(self.model.vision, VisionConfig,
                                                               "model.vision."))
        vision = dataclasses.replace(vision, out_hidden_size=text.hidden_size)
        tok = dict(self.model.tokens)
        published = _check_type(tok.pop("published", False), bool, "model.tokens.published")
        base = TokenIds() if published else mc.tokens
        tokens = dataclasses.replace(base, **typed_fields(tok, TokenIds, "model.tokens."))
        return dataclasses.replace(mc, text=text, vision=vision, tokens=tokens)


def typed_fields(values: dict[str, Any], cls: type, prefix: str) -> dict[str, Any]:
    """Overrides for dataclass `cls`, each checked (and coerced, e.g. YAML's "5.0e6" string to
    a float) against the field's type; an unknown key is named with its full path."""
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in values.items():
        if k not in hints:
            raise ConfigError(f"unknown config key {prefix}{k}; valid keys under {prefix[:-1]}: "
                              f"{sorted(hints)}")
        tp = hints[k]
        if tp is int and isinstance(v, str):  # "1e4" from YAML 1.1
            try:
                v = float(v)
            except ValueError:
                raise ConfigError(f"{prefix}{k}: expected int, got {v!r}") from None
        if tp is int and isinstance(v, float) and v.is_integer():
            v = int(v)
        out[k] = _check_type(v, tp, f"{prefix}{k}")
    return out


def checkpoint_path(directory: str | Path) -> Path:
    """A checkpoint root (holding `latest`) -> its newest checkpoint; any other dir as is."""
    d = Path(directory)
    latest = d / "latest"
    if latest.is_file():
        name = latest.read_text().strip()
        if name and (d / name).is_dir():
            return d / name
    return d


def stored_model_config(directory: str | Path):
    """The architecture saved with a megatron checkpoint (llava_config.json), or None."""
    import json

    from llava_ov15.model.config import LlavaOV15Config

    f = checkpoint_path(directory) / "llava_config.json"
    if not f.is_file():
        return None
    try:
        return LlavaOV15Config.from_hf_dict(json.loads(f.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"checkpoint.load: cannot read {f}: {e}") from None


# ---- loading ------------------------------------------------------------------------------
def _check_type(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):  # an optional section, e.g. train.hard_mining
        return _build(tp, value or {}, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_check_type(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. `stage: 1.5`
    if tp in (int, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]!s}"
                          + (f" (and {unknown[1:]})" if unknown[1:] else "")
                          + f"; valid keys under {prefix or 'the top level'}: {sorted(names)}")
    kw = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kw[name] = _build(tp, value or {}, f"{prefix}{name}.")
        else:
            kw[name] = _check_type(value, tp, f"{prefix}{name}")
    return cls(**kw)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        d = data
        for p in path[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ConfigError(f"--set {item}: {p} is not a section")
        d[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = (),
                world_size: int | None = None, resolve: bool = True) -> TrainConfig:
    """YAML + overrides -> a validated config. `resolve` (the trainer's way) also fills what
    comes from the run's inputs (the pack's manifest, the tokenizer, the stored architecture of
    `checkpoint.load`) and checks them; without it only the file itself is checked."""
    if path and not Path(path).is_file():
        raise ConfigError(f"--config: no such file {path}")
    try:
        data = yaml.safe_load(Path(path).read_text()) if path else {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    data = apply_overrides(data or {}, list(overrides))
    cfg = _build(TrainConfig, data, "")
    if resolve:
        from .resolve import resolve_inputs

        resolve_inputs(cfg)
    validate(cfg, world_size)
    return cfg


# ---- validation ---------------------------------------------------------------------------
def _need(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def validate(cfg: TrainConfig, world_size: int | None = None) -> None:
    t, p, d = cfg.train, cfg.parallel, cfg.data
    _need(t.stage in STAGES, "train.stage", f"must be one of {STAGES}, got {t.stage!r}")
    _need(t.loss in ("pack_mean", "token_mean"), "train.loss",
          f"must be pack_mean or token_mean, got {t.loss!r}")
    _need(t.lr_decay_style in ("cosine", "linear", "constant"), "train.lr_decay_style",
          f"unsupported {t.lr_decay_style!r}")
    _need(d.kind in (None, "synthetic", "packed"), "data.kind",
          f"must be synthetic or packed, got {d.kind!r}")
    _need(d.kind != "packed" or bool(d.path), "data.path", "required for data.kind=packed")
    _need(cfg.log.progress in ("auto", "bar", "log", "quiet"), "log.progress",
          f"invalid {cfg.log.progress!r}")
    _need(p.attention in ("auto", "te", "flex", "mask"), "parallel.attention",
          f"must be auto, te, flex or mask, got {p.attention!r}")
    if isinstance(t.recompute, bool):
        t.recompute = "full" if t.recompute else "off"
    _need(t.recompute in ("off", "full", "selective"), "train.recompute",
          f"must be off, full or selective (or true/false), got {t.recompute!r}")
    _need(t.loss_chunk_tokens >= 0, "train.loss_chunk_tokens",
          f"must be >= 0 (0 = unfused logits), got {t.loss_chunk_tokens}")
    validate_extras(cfg)
    _need(cfg.checkpoint.sharding_type in ("fully_reshardable", "dp_reshardable"),
          "checkpoint.sharding_type", "must be fully_reshardable or dp_reshardable")
    for key, v in (("train.steps", t.steps), ("train.global_batch_size", t.global_batch_size),
                   ("data.seq_len", d.seq_len), ("data.micro_batch_size", d.micro_batch_size),
                   ("parallel.tp", p.tp), ("parallel.pp", p.pp)):
        _need(v is None or v >= 1, key, f"must be >= 1, got {v}")
    _need(t.lr > 0 and 0 <= t.min_lr <= t.lr, "train.min_lr", "need 0 <= min_lr <= lr")
    _need(0 <= t.warmup_fraction < 1, "train.warmup_fraction", "must be in [0, 1)")
    _need(len(d.image_sizes) == 2 and 28 <= d.image_sizes[0] <= d.image_sizes[1],
          "data.image_sizes", "expects [min_side, max_side] with min_side >= 28")
    _need(len(d.caption_words) == 2 and 1 <= d.caption_words[0] <= d.caption_words[1],
          "data.caption_words", "expects [min, max] with min >= 1")
    try:
        mc = cfg.model_config()
    except ConfigError:
        raise
    except (KeyError, TypeError, OSError, ValueError) as e:
        raise ConfigError(f"model: {e}") from None
    tc = mc.text
    _need(tc.num_heads % p.tp == 0, "parallel.tp",
          f"{p.tp} does not divide the {tc.num_heads} attention heads")
    _need(tc.num_kv_heads % p.tp == 0, "parallel.tp",
          f"{p.tp} does not divide the {tc.num_kv_heads} key/value heads")
    _need(tc.intermediate_size % p.tp == 0, "parallel.tp",
          f"{p.tp} does not divide the FFN size {tc.intermediate_size}")
    _need(tc.vocab_size % p.tp == 0, "parallel.tp",
          f"{p.tp} does not divide the vocabulary ({tc.vocab_size})")
    _need(tc.num_layers % p.pp == 0, "parallel.pp",
          f"{p.pp} does not divide the {tc.num_layers} layers")
    trainable = t.trainable if t.trainable is not None else STAGE_TRAINABLE[t.stage]
    _need(p.pp == 1 or trainable is None or any(x.startswith("language.") for x in trainable),
          "parallel.pp", "pipeline stages after the first have nothing to train when only the "
          "vision side trains (stage 1): use pp=1")
    _need(not tc.tie_word_embeddings, "model.text.tie_word_embeddings",
          "tied embeddings are not supported by the trainer")
    if world_size is not None:
        _need(world_size % (p.tp * p.pp) == 0, "parallel.tp",
              f"tp·pp = {p.tp * p.pp} does not divide the world size {world_size}")
        dp = world_size // (p.tp * p.pp)
        _need(p.dp in (None, dp), "parallel.dp",
              f"{p.dp} != world_size / (tp·pp) = {dp}")
        per_step = d.micro_batch_size * dp
        _need(t.global_batch_size % per_step == 0, "train.global_batch_size",
              f"{t.global_batch_size} is not a multiple of micro_batch_size·dp = {per_step}")


def validate_extras(cfg: TrainConfig) -> None:
    """The recipe extras (contrastive term, hard mining, image-token cap, OOM retry)."""
    t, d, p = cfg.train, cfg.data, cfg.parallel
    _need(t.contrastive_weight >= 0, "train.contrastive_weight", "must be >= 0")
    _need(0 < t.contrastive_temperature <= 1, "train.contrastive_temperature",
          "must be in (0, 1]")
    _need(t.contrastive_weight == 0 or p.pp == 1, "train.contrastive_weight",
          "the contrastive term needs parallel.pp=1 (vision and caption states on one stage)")
    _need(d.max_image_tokens_per_step is None or d.max_image_tokens_per_step >= 1,
          "data.max_image_tokens_per_step", "must be >= 1 (or unset)")
    m = t.hard_mining
    if m is not None:
        _need(0 < m.fraction < 1, "train.hard_mining.fraction", "must be in (0, 1)")
        _need(m.boost >= 1, "train.hard_mining.boost", "must be >= 1")
        _need(m.warmup_steps >= 0, "train.hard_mining.warmup_steps", "must be >= 0")
        _need(0 <= m.ema < 1, "train.hard_mining.ema", "must be in [0, 1)")
        _need(p.pp == 1, "train.hard_mining", "needs parallel.pp=1 (losses and data on one rank)")
        _need(d.path is not None or d.kind == "packed" or d.num_packs is not None,
              "train.hard_mining", "needs epochs: a finite dataset (data.path, or "
              "data.num_packs for synthetic data)")


def resolved_dp(cfg: TrainConfig, world_size: int) -> int:
    return world_size // (cfg.parallel.tp * cfg.parallel.pp)
