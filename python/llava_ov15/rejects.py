"""The verdict on a finished `build` / `pack` job: is its output usable as it is?

A job that writes nothing usable, or rejects more than ``max_reject_rate`` of its input, has
still written everything (shards, ``stats.json`` / ``pack_stats.json``, ``rejects.jsonl``), but
it must not look like a success: :class:`RejectsError` names the top reject reasons with the
first example of each, so the user knows what to fix without opening ``rejects.jsonl``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llava_ov15._native import PackError

__all__ = ["DEFAULT_MAX_REJECT_RATE", "RejectsError", "check_build", "check_pack",
           "check_rate"]

DEFAULT_MAX_REJECT_RATE = 0.5
# Reasons listed in the message, most frequent first.
TOP_REASONS = 3
# Hints for reasons whose fix is an option rather than the data.
_HINTS = {
    "duplicate": "--dedup image|off changes what counts as a duplicate",
    "missing_file": "relative paths resolve against --image-root, by default the input's folder",
    "longer than max_len": "raise --max-len",
    "more image tokens than max_image_tokens": "raise --max-image-tokens or lower --max-pixels",
}


class RejectsError(PackError):
    """The job finished and wrote everything, but its output has no samples (no packs) or
    more rejects than ``max_reject_rate`` allows. ``summary`` is the job's summary dict."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


def check_rate(max_reject_rate: float | None) -> None:
    """``None`` disables the rate check; otherwise a fraction in [0, 1]."""
    if max_reject_rate is None:
        return
    if not (isinstance(max_reject_rate, int | float) and 0 <= max_reject_rate <= 1):
        raise ValueError(
            f"max_reject_rate must be a fraction between 0 and 1, got {max_reject_rate!r}"
        )


def _over(rejects: int, total: int, rate: float | None) -> bool:
    return rate is not None and total > 0 and rejects > rate * total


def _first_examples(path: Path, wanted: Iterable[str], category_of) -> dict[str, dict]:
    """The first rejects line of each wanted category, reading no further than needed."""
    left, found = set(wanted), {}
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if not left:
                    break
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                cat = category_of(row)
                if cat in left:
                    found[cat] = row
                    left.discard(cat)
    except OSError:
        pass  # The message still names the reasons and counts.
    return found


def _reasons(by_reason: dict[str, int], examples: dict[str, dict], show) -> list[str]:
    top = sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]
    lines = []
    for cat, n in top:
        line = f"  {cat}: {n}"
        if cat in examples:
            line += f", e.g. {show(examples[cat])}"
        if cat in _HINTS:
            line += f" [hint: {_HINTS[cat]}]"
        lines.append(line)
    return lines


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def check_build(summary: dict[str, Any], max_reject_rate: float | None) -> None:
    """Raise :class:`RejectsError` if a finished build wrote no sample or rejected more than
    ``max_reject_rate`` of its records."""
    records, samples, rejects = summary["records"], summary["samples"], summary["rejects"]
    if samples > 0 and not _over(rejects, records, max_reject_rate):
        return
    out = Path(summary["output"])
    by_reason = summary["stats"].get("rejects_by_reason", {})
    top = sorted(by_reason, key=lambda c: (-by_reason[c], c))[:TOP_REASONS]
    examples = _first_examples(out / "rejects.jsonl", top, lambda r: r.get("category"))

    def show(r: dict) -> str:
        rid = f" id={r['id']}" if r.get("id") is not None else ""
        if "element" in r:  # a JSON array: `line` is the element number, not a line
            where = f"{r.get('file')} element {r['element']} (byte {r.get('offset')})"
        else:
            where = f"{r.get('file')}:{r.get('line')}"
        return f"{where}{rid} {r.get('reason')}"

    if samples == 0:
        head = f"build wrote no samples: all {records} records were rejected"
    else:
        head = (f"build rejected {rejects} of {records} records ({_pct(rejects, records)}, "
                f"more than --max-reject-rate {max_reject_rate:g})")
    tail = (f"  everything is written to {out} (see rejects.jsonl, stats.json)"
            + ("" if samples == 0 else "; --max-reject-rate 1 accepts it"))
    raise RejectsError("\n".join([head + "; top reasons:", *_reasons(by_reason, examples, show),
                                  tail]), summary)


def _pack_category(row: dict) -> str:
    """The `rejects_by_reason` category of a pack rejects line (the line holds the reason)."""
    if row.get("category"):
        return row["category"]
    reason = str(row.get("reason", ""))
    if row.get("length") is None:
        return "invalid sample"
    if "image tokens" in reason:
        return "more image tokens than max_image_tokens"
    if "max_len" in reason:
        return "longer than max_len"
    return reason


def check_pack(summary: dict[str, Any], max_reject_rate: float | None) -> None:
    """Raise :class:`RejectsError` if a finished pack wrote no pack or rejected more than
    ``max_reject_rate`` of its source samples."""
    st = summary["stats"]
    total, rejects, packs = st["source_samples"], summary["rejects"], summary["packs"]
    if packs > 0 and not _over(rejects, total, max_reject_rate):
        return
    out = Path(summary["output"])
    by_reason = st.get("rejects_by_reason", {})
    top = sorted(by_reason, key=lambda c: (-by_reason[c], c))[:TOP_REASONS]
    examples = _first_examples(out / "rejects.jsonl", top, _pack_category)

    def show(r: dict) -> str:
        return f"{r.get('source_shard')} key={r.get('key')} {r.get('reason')}"

    if total == 0:
        head = "pack found no samples in its input: nothing to pack"
    elif packs == 0:
        head = f"pack wrote no packs: all {total} samples were rejected"
    else:
        head = (f"pack rejected {rejects} of {total} samples ({_pct(rejects, total)}, "
                f"more than --max-reject-rate {max_reject_rate:g})")
    lines = [head + ("; top reasons:" if by_reason else "")]
    lines += _reasons(by_reason, examples, show)
    lines.append(f"  everything is written to {out} (see rejects.jsonl, pack_stats.json)"
                 + ("" if packs == 0 else "; --max-reject-rate 1 accepts it"))
    raise RejectsError("\n".join(lines), summary)


def parse_rate(text: str) -> float:
    """`--max-reject-rate` values: a fraction in [0, 1] (e.g. 0.5), or a percentage (``20%``)."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:  # also refuses nan
        raise ValueError(f"--max-reject-rate must be a fraction in [0, 1] or a percentage, "
                         f"not {text!r}")
    return value
