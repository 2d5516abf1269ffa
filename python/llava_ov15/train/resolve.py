"""What a run takes from its inputs, filled in and checked before any work starts.

* ``data.kind`` unset: "packed" when ``data.path`` is given, else "synthetic".
* ``data.kind=packed``: the pack's manifest (`llava_ov15.data.pack_manifest.PackInfo`) supplies
  every setting the packer fixed when it counted tokens — the tokenizer (the file stored in the
  pack), ``seq_len`` (its ``--max-len``), ``min_pixels``/``max_pixels``, ``caption_format``,
  ``max_image_tokens``. A value given in the config must agree with it (a different one would
  make the loader's token counts disagree with the packer's halfway through a run).
* synthetic: the same pixel defaults as the packer and the HF processor
  (`llava_ov15.model.processor.MIN_PIXELS`/`MAX_PIXELS`), the "word" test tokenizer.
* ``checkpoint.load``: the directory must exist; its stored architecture (llava_config.json) is
  the model's (`TrainConfig.model_config`), and an explicit ``model.preset`` must agree with it.
* ``model.fit_tokenizer`` (random init only): vocabulary and special token ids from the tokenizer.
* Always: the model's vocabulary must hold every tokenizer id, and the special token ids the
  model uses (image pad, vision start/end, chat markers) must be the tokenizer's.

The config is updated in place, so the resolved values are what checkpoints record.
"""

from __future__ import annotations

import hashlib
from dataclasses import fields
from pathlib import Path

from .config import (
    SYNTHETIC_SEQ_LEN,
    ConfigError,
    TrainConfig,
    _check_type,
    stored_model_config,
    typed_fields,
)

# TokenIds field -> the token's text (llava_ov15.model.processor's constants)
SPECIAL_FIELDS = {"endoftext": "ENDOFTEXT", "im_start": "IM_START", "im_end": "IM_END",
                  "vision_start": "VISION_START", "vision_end": "VISION_END",
                  "image": "IMAGE_PAD", "video": "VIDEO_PAD"}
# Tokens every training sample contains; a tokenizer without them cannot be used.
REQUIRED_SPECIALS = ("endoftext", "im_start", "im_end", "vision_start", "vision_end", "image")
VOCAB_MULTIPLE = 128  # fitted vocabularies are padded to this (divisible by any TP size used)


def resolve_inputs(cfg: TrainConfig) -> None:
    _typed_model_overrides(cfg)
    d = cfg.data
    if d.kind is None:
        d.kind = "packed" if d.path else "synthetic"
    if d.kind == "packed":
        _from_pack(cfg)
    elif d.kind == "synthetic":
        _synthetic_defaults(cfg)
    else:
        return  # validate() names the bad kind
    _check_load(cfg)
    tok = load_tokenizer_for(cfg)
    if cfg.model.fit_tokenizer and not (cfg.checkpoint.load or cfg.model.hf_checkpoint) \
            and d.tokenizer != "word":
        _fit_model_to(cfg, tok)
    check_vocabulary(cfg, tok)


def _typed_model_overrides(cfg: TrainConfig) -> None:
    """model.text/vision/tokens checked against the model's field types and stored coerced
    (so the config a checkpoint records holds `rope_theta: 5000000.0`, not a string)."""
    from llava_ov15.model.config import TextConfig, TokenIds, VisionConfig

    m = cfg.model
    m.text = typed_fields(m.text, TextConfig, "model.text.")
    m.vision = typed_fields(m.vision, VisionConfig, "model.vision.")
    tokens = dict(m.tokens)
    published = tokens.pop("published", None)
    m.tokens = typed_fields(tokens, TokenIds, "model.tokens.")
    if published is not None:
        m.tokens["published"] = _check_type(published, bool, "model.tokens.published")


# ---- data ---------------------------------------------------------------------------------
def _synthetic_defaults(cfg: TrainConfig) -> None:
    from llava_ov15.model.processor import MAX_PIXELS, MIN_PIXELS

    d = cfg.data
    for key in ("caption_format", "max_image_tokens"):
        if getattr(d, key) is not None:
            raise ConfigError(f"data.{key}: only for data.kind=packed (it is the pack's)")
    d.tokenizer = d.tokenizer or "word"
    d.seq_len = d.seq_len or SYNTHETIC_SEQ_LEN
    d.min_pixels = d.min_pixels or MIN_PIXELS
    d.max_pixels = d.max_pixels or MAX_PIXELS


def tokenizer_file(spec: str) -> Path | None:
    """data.tokenizer -> its tokenizer.json ("word" has none: it is built from the model)."""
    if spec == "word":
        return None
    if spec == "qwen":
        from llava_ov15.data.tokenizer import qwen_tokenizer_json

        return qwen_tokenizer_json()
    p = Path(spec)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise ConfigError(f"data.tokenizer: no such file {spec}")
    return p


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# manifest field -> the llava-pack option that set it (for messages)
PACK_OPTIONS = {"min_pixels": "--min-pixels", "max_pixels": "--max-pixels",
                "caption_format": "--caption-format", "max_image_tokens": "--max-image-tokens"}


def _from_pack(cfg: TrainConfig) -> None:
    d = cfg.data
    if not d.path:
        raise ConfigError("data.path: required for data.kind=packed")
    path = Path(d.path)
    if not path.is_dir():
        raise ConfigError(f"data.path: no such directory {d.path}")
    try:
        from llava_ov15.data.pack_manifest import PackInfo

        info = PackInfo.load(path)
    except (ValueError, OSError) as e:
        raise ConfigError(f"data.path: {' '.join(str(e).split())}") from None
    stored = info.tokenizer_file
    if d.tokenizer is None:
        if stored is None or not Path(stored).is_file():
            raise ConfigError(f"data.tokenizer: the pack {d.path} does not hold its tokenizer "
                              "(written by an older llava-pack): set data.tokenizer to the "
                              "tokenizer.json it was built with")
        d.tokenizer = str(stored)
    else:
        if d.tokenizer == "word":
            raise ConfigError("data.tokenizer=word is the synthetic test tokenizer; a pack is "
                              "read with the tokenizer it was built with: drop data.tokenizer")
        given = tokenizer_file(d.tokenizer)
        want = info.tokenizer_sha256
        if want and _sha256(given) != want:
            raise ConfigError(
                f"data.tokenizer={d.tokenizer} (sha256 {_sha256(given)[:12]}) but the pack was "
                f"built with another tokenizer (sha256 {want[:12]}"
                + (f", stored as {stored}" if stored else "")
                + "): drop data.tokenizer to use the pack's")
        d.tokenizer = str(given)
    if d.seq_len is None:
        d.seq_len = info.max_len
    elif info.max_len and d.seq_len < info.max_len:
        raise ConfigError(f"data.seq_len={d.seq_len} but the pack was built with --max-len "
                          f"{info.max_len} (its packs may not fit a row): drop data.seq_len "
                          f"or repack with --max-len {d.seq_len}")
    for key, option in PACK_OPTIONS.items():
        have, want = getattr(info, key, None), getattr(d, key)
        if want is None:
            setattr(d, key, have)
        elif want != have and (have is not None or key == "max_image_tokens"):
            built = f"{option} {have}" if have is not None else f"no {option}"
            raise ConfigError(f"data.{key}={want} but the pack was built with {built}: drop "
                              f"data.{key} to use the pack's")


# ---- model ----------------------------------------------------------------------------------
_SHAPE_FIELDS = {
    "text": ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
             "intermediate_size"),
    "vision": ("hidden_size", "num_layers", "num_heads", "intermediate_size", "patch_size",
               "spatial_merge_size"),
}


def _check_load(cfg: TrainConfig) -> None:
    load = cfg.checkpoint.load
    if not load:
        return
    if not Path(load).is_dir():
        raise ConfigError(f"checkpoint.load: no such directory {load}")
    stored = stored_model_config(load)
    if stored is None:
        if cfg.model.preset is None and not cfg.model.hf_checkpoint:
            raise ConfigError(f"checkpoint.load: {load} has no llava_config.json; set "
                              "model.preset (and model.text/model.vision) to the architecture "
                              "it holds")
        return
    if cfg.model.preset is None:
        return
    from llava_ov15.model.config import get_config

    try:
        preset = get_config(cfg.model.preset)
    except KeyError as e:
        raise ConfigError(f"model.preset: {e.args[0]}") from None
    for part, names in _SHAPE_FIELDS.items():
        a, b = getattr(preset, part), getattr(stored, part)
        for n in names:
            if getattr(a, n) != getattr(b, n):
                raise ConfigError(
                    f"model.preset={cfg.model.preset} has {part}.{n}={getattr(a, n)} but "
                    f"checkpoint.load {load} holds a model with {part}.{n}={getattr(b, n)}: "
                    "drop model.preset to use the checkpoint's architecture")


def load_tokenizer_for(cfg: TrainConfig):
    """The run's `tokenizers.Tokenizer` (data.tokenizer resolved)."""
    from .data import load_tokenizer

    spec = cfg.data.tokenizer
    if spec not in ("word", "qwen"):
        spec = str(tokenizer_file(spec))
    mc = cfg.model_config()
    try:
        return load_tokenizer(spec, mc)
    except Exception as e:  # tokenizers raises its own Exception type for a bad file
        raise ConfigError(f"data.tokenizer: cannot load {cfg.data.tokenizer}: {e}") from None


def _special_ids(tok) -> dict[str, int | None]:
    from llava_ov15.model import processor

    return {f: tok.token_to_id(getattr(processor, name)) for f, name in SPECIAL_FIELDS.items()}


def _vocab_top(tok) -> int:
    """1 + the largest id the tokenizer can produce."""
    return max(tok.get_vocab(with_added_tokens=True).values()) + 1


def _fit_model_to(cfg: TrainConfig, tok) -> None:
    """Random-init model: vocabulary = the tokenizer's (padded), its special token ids."""
    m = cfg.model
    top = _vocab_top(tok)
    m.text.setdefault("vocab_size", -(-top // VOCAB_MULTIPLE) * VOCAB_MULTIPLE)
    for f, tid in _special_ids(tok).items():
        if tid is not None:
            m.tokens.setdefault(f, tid)


def check_vocabulary(cfg: TrainConfig, tok) -> None:
    """Every tokenizer id must index the embedding, and the ids the model treats specially
    (image placeholders, chat markers) must be the tokenizer's — else an IndexError or silent
    garbage deep inside the first step."""
    mc = cfg.model_config()
    name = cfg.data.tokenizer
    top, vocab = _vocab_top(tok), mc.text.vocab_size
    hint = ("set model.fit_tokenizer=true (randomly initialised model)"
            if not (cfg.checkpoint.load or cfg.model.hf_checkpoint)
            else "use the tokenizer this model was trained with")
    if top > vocab:
        raise ConfigError(f"model.text.vocab_size={vocab} is too small for the tokenizer {name} "
                          f"(ids up to {top - 1}): {hint}")
    ids = _special_ids(tok)
    for f in (x.name for x in fields(mc.tokens)):
        tid, mine = ids.get(f), getattr(mc.tokens, f)
        if tid is None:
            if f in REQUIRED_SPECIALS:
                from llava_ov15.model import processor

                raise ConfigError(f"the tokenizer {name} has no "
                                  f"{getattr(processor, SPECIAL_FIELDS[f])} token, which every "
                                  "training sample uses")
            continue
        if tid != mine:
            from llava_ov15.model import processor

            raise ConfigError(
                f"model.tokens.{f}={mine} but the tokenizer {name} gives "
                f"{getattr(processor, SPECIAL_FIELDS[f])} the id {tid}: "
                + ("set model.tokens.published=true (the Qwen ids) or " if tid in
                   _published_ids() else "") + hint)


def _published_ids() -> set[int]:
    from llava_ov15.model.config import TokenIds

    t = TokenIds()
    return {getattr(t, f.name) for f in fields(t)}
