"""The non-weight files of an HF model directory: tokenizer, chat template, generation defaults.

`python -m llava_ov15.convert` uses these so that a converted directory opens as is in
`python -m llava_ov15.infer`, `python -m llava_ov15.eval` (both read config.json, safetensors,
tokenizer.json and generation_config.json) and in transformers' `AutoTokenizer` /
`AutoImageProcessor` (tokenizer_config.json with the chat template, preprocessor_config.json).

Files that came with the model (an HF download, or a directory this project wrote) are carried
over unchanged; the ones missing are generated from the model config and the tokenizer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .config import LlavaOV15Config
from .processor import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    IMAGE_MEAN,
    IMAGE_PAD,
    IMAGE_STD,
    MAX_PIXELS,
    MERGE_SIZE,
    MIN_PIXELS,
    PATCH_SIZE,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
)

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
# Everything of an HF model directory except config.json and the weights; carried HF -> mcore ->
# HF so a round trip keeps the published tokenizer files and generation settings.
COMPANION_FILES = (
    TOKENIZER_JSON, TOKENIZER_CONFIG, "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json", GENERATION_CONFIG,
    PREPROCESSOR_CONFIG,
)

# Qwen2-VL's chat template (the one the published LLaVA-OneVision-1.5 models ship); renders the
# same text as `processor.render_chat`.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class TokenizerError(ValueError):
    """The tokenizer cannot serve this model (missing, unreadable, wrong special-token ids)."""


def find_tokenizer(candidates: list[Path]) -> Path | None:
    """The first `tokenizer.json` among these files or directories."""
    for c in candidates:
        f = c / TOKENIZER_JSON if c.is_dir() else c
        if f.is_file():
            return f
    return None


def check_tokenizer(path: Path, cfg: LlavaOV15Config):
    """Load `path` and check it against the model: special-token ids and vocabulary size."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file
        raise TokenizerError(f"{path}: not a readable tokenizer.json ({e})") from None
    t = cfg.tokens
    expected = {ENDOFTEXT: t.endoftext, IM_START: t.im_start, IM_END: t.im_end,
                VISION_START: t.vision_start, VISION_END: t.vision_end, IMAGE_PAD: t.image}
    bad = [f"{s} is {tok.token_to_id(s)} (model: {i})" for s, i in expected.items()
           if tok.token_to_id(s) != i]
    if bad:
        raise TokenizerError(f"{path} does not match the model's special-token ids: "
                             + "; ".join(bad))
    n = tok.get_vocab_size(with_added_tokens=True)
    if n > cfg.text.vocab_size:
        raise TokenizerError(f"{path} has {n} tokens but the model's vocabulary is "
                             f"{cfg.text.vocab_size}")
    return tok


def tokenizer_config(tokenizer_json: Path, cfg: LlavaOV15Config) -> dict[str, Any]:
    """tokenizer_config.json for AutoTokenizer: class, special tokens, chat template."""
    model_type = json.loads(tokenizer_json.read_text())["model"]["type"]
    # Qwen2Tokenizer rebuilds a byte-level BPE from tokenizer.json; any other model (the tests'
    # word-level tokenizer) needs the generic wrapper, which uses tokenizer.json as it is.
    cls = "Qwen2Tokenizer" if model_type == "BPE" else "PreTrainedTokenizerFast"
    return {
        "tokenizer_class": cls, "bos_token": None, "eos_token": IM_END, "pad_token": ENDOFTEXT,
        "unk_token": None, "additional_special_tokens": [
            IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD],
        "model_max_length": cfg.text.max_position_embeddings, "padding_side": "left",
        "clean_up_tokenization_spaces": False, "split_special_tokens": False,
        "errors": "replace", "add_prefix_space": False, "chat_template": CHAT_TEMPLATE,
    }


def generation_config(cfg: LlavaOV15Config) -> dict[str, Any]:
    """Stop at <|im_end|> or <|endoftext|>; greedy unless the caller asks to sample."""
    t = cfg.tokens
    return {"eos_token_id": [t.im_end, t.endoftext], "pad_token_id": t.endoftext,
            "bos_token_id": t.endoftext, "do_sample": False, "repetition_penalty": 1.0}


def preprocessor_config() -> dict[str, Any]:
    """Qwen2-VL image processor settings with the model's patch layout (see processor.py)."""
    return {
        "image_processor_type": "Qwen2VLImageProcessor", "do_resize": True, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "do_convert_rgb": True, "image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD),
        "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS,
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        "patch_size": PATCH_SIZE, "temporal_patch_size": 1, "merge_size": MERGE_SIZE,
    }


def is_model_dir(d: Path) -> bool:
    """A directory whose companion files belong to this model (not e.g. a text LLM's)."""
    return (d / "config.json").is_file() or (d / "llava_config.json").is_file()


def copy_companions(src: Path, dst: Path) -> list[str]:
    """Copy the companion files present in `src` to `dst`; returns their names."""
    out = []
    for name in COMPANION_FILES:
        if (src / name).is_file() and (src / name).resolve() != (dst / name).resolve():
            shutil.copyfile(src / name, dst / name)
            out.append(name)
    return out


def write_companions(out: Path, tokenizer_json: Path, cfg: LlavaOV15Config) -> list[str]:
    """Make `out` a complete HF directory next to its config.json and weights.

    The tokenizer's own directory contributes its companion files when it is a model directory
    (an HF download or a directory this project wrote); tokenizer.json is always copied; the
    tokenizer config, generation config and image processor config are generated when absent.
    """
    written = []
    if is_model_dir(tokenizer_json.parent) and tokenizer_json.name == TOKENIZER_JSON:
        written += copy_companions(tokenizer_json.parent, out)
    if TOKENIZER_JSON not in written:
        shutil.copyfile(tokenizer_json, out / TOKENIZER_JSON)
        written.append(TOKENIZER_JSON)
    generated = {TOKENIZER_CONFIG: lambda: tokenizer_config(tokenizer_json, cfg),
                 GENERATION_CONFIG: lambda: generation_config(cfg),
                 PREPROCESSOR_CONFIG: preprocessor_config}
    for name, make in generated.items():
        if name not in written:
            (out / name).write_text(json.dumps(make(), indent=2) + "\n")
            written.append(name)
    return written
