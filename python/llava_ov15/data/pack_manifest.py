"""What a `llava-pack pack` output records about how it was measured (docs/format.md §12).

Training on a pack must render samples exactly as the packer did when it measured them:
same tokenizer, same pixel limits (image token counts), same training strings (caption
format, system prompt, eos token). The pack's ``manifest.json`` records all of it under
``options``; :class:`PackInfo` is the typed view the trainer and loader read it through::

    info = PackInfo.load("packed/")
    tok = _native.SampleTokenizer(str(info.tokenizer_file), **info.sample_tokenizer_kwargs())
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PackInfo", "CAPTION_FORMATS"]

CAPTION_FORMATS = ("pretrain", "chat")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class PackInfo:
    """The settings a packed dataset was measured with (``manifest.json`` → ``options``)."""

    path: Path
    """The pack directory (absolute)."""
    caption_format: str
    """``"pretrain"`` (vision tags + caption + eos) or ``"chat"`` (caption as a chat turn)."""
    tokenizer_sha256: str
    """sha256 of the tokenizer.json the lengths were counted with."""
    tokenizer_file: Path | None
    """Absolute path of the pack's copy of that tokenizer.json; None when the pack has none."""
    max_len: int
    max_image_tokens: int | None
    min_pixels: int
    max_pixels: int
    system: str | None
    """System prompt of chat-form samples that do not start with a system turn (None: none)."""
    caption_prompt: str
    """Text after the images of caption samples (empty by default)."""
    eos_token: str
    """The token ending pretraining-form caption samples."""
    packs: int
    samples: int

    @classmethod
    def load(cls, pack_dir: str | os.PathLike[str]) -> PackInfo:
        """Read ``pack_dir/manifest.json``; ValueError (one clear line) if it is not the
        complete output of ``llava-pack pack``."""
        root = Path(pack_dir).expanduser().resolve()
        mpath = root / "manifest.json"
        if not root.is_dir():
            raise ValueError(f"{root} is not a directory (expected a `llava-pack pack` output)")
        if not mpath.is_file():
            hint = (" (an unfinished pack: rerun `llava-pack pack --resume`)"
                    if (root / ".llava-pack").is_dir() else "")
            raise ValueError(f"{root} has no manifest.json: not a `llava-pack pack` output{hint}")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{mpath}: unreadable manifest ({e})") from None
        if not isinstance(manifest, dict):
            raise ValueError(f"{mpath}: manifest is not a JSON object")
        kind = manifest.get("kind")
        if kind != "packed":
            # Built shards' manifests carry no kind (docs/format.md §8).
            what = "built shards (a `llava-pack build` output)" if kind is None else \
                f"a manifest of kind {kind!r}"
            raise ValueError(f"{root} holds {what}, not packs: run llava-pack pack first, e.g. "
                             f"`llava-pack pack --input {root} --output packed/`")
        opts = manifest.get("options")
        if not isinstance(opts, dict):
            raise ValueError(f"{mpath}: manifest has no options")
        if "caption_format" not in opts:
            raise ValueError(f"{root} was packed by an older llava-pack that did not record its "
                             "training strings; re-run llava-pack pack --overwrite on it")

        def field(name: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
            value = opts.get(name)
            if value is None and optional:
                return None
            # bool is an int subclass: a JSON true is never a valid count.
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"{mpath}: options.{name} is {value!r}, expected "
                                 f"{getattr(kind, '__name__', kind)}")
            return value

        fmt = field("caption_format", str)
        if fmt not in CAPTION_FORMATS:
            raise ValueError(f"{mpath}: options.caption_format {fmt!r} is not one of "
                             f"{', '.join(CAPTION_FORMATS)}")
        tok_name = field("tokenizer_file", str, optional=True)
        tok_file = None
        if tok_name is not None:
            candidate = root / tok_name
            tok_file = candidate if candidate.is_file() else None
        totals = manifest.get("totals") if isinstance(manifest.get("totals"), dict) else {}
        return cls(
            path=root,
            caption_format=fmt,
            tokenizer_sha256=field("tokenizer_sha256", str),
            tokenizer_file=tok_file,
            max_len=field("max_len", int),
            max_image_tokens=field("max_image_tokens", int, optional=True),
            min_pixels=field("min_pixels", int),
            max_pixels=field("max_pixels", int),
            system=field("system", str, optional=True),
            caption_prompt=field("caption_prompt", str),
            eos_token=field("eos_token", str),
            packs=int(totals.get("packs", 0)),
            samples=int(totals.get("samples", 0)),
        )

    def tokenizer_matches(self, tokenizer: str | os.PathLike[str]) -> bool:
        """Whether ``tokenizer`` is byte-identical to the tokenizer.json the pack used."""
        return _sha256(Path(tokenizer)) == self.tokenizer_sha256

    def sample_tokenizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``_native.SampleTokenizer`` / ``LengthCounter`` that
        reproduce the packer's rendering (everything but the tokenizer path)."""
        return {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels,
                "system": self.system, "caption_prompt": self.caption_prompt,
                "caption_format": self.caption_format, "eos_token": self.eos_token}
