"""ChartQA relaxed accuracy (lmms-eval / Pix2Struct rule).

Both sides are parsed as floats ("12%" -> 0.12); if the prediction parses and the target parses
to a non-zero number, correct iff |pred - target| / |target| <= 5%; otherwise a case-insensitive
exact string match is required.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence


def _to_float(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correct(pred: str, target: str, max_relative_change: float = 0.05) -> bool:
    p, t = _to_float(pred), _to_float(target)
    if p is not None and t:
        return abs(p - t) / abs(t) <= max_relative_change
    return pred.lower() == target.lower()


def score_chartqa(docs: Sequence[dict], preds: Sequence[str]) -> dict:
    per = [100.0 if relaxed_correct(p, str(d["answer"])) else 0.0
           for d, p in zip(docs, preds, strict=True)]
    split: dict[str, list[float]] = defaultdict(list)
    for d, s in zip(docs, per, strict=True):
        split["human" if d.get("type") == "human_test" else "augmented"].append(s)
    out = {"relaxed_overall": sum(per) / len(per) if per else 0.0}
    for k in ("human", "augmented"):
        if split[k]:
            out[f"relaxed_{k}_split"] = sum(split[k]) / len(split[k])
    return {"metrics": out,
            "breakdowns": {"split": {k: sum(v) / len(v) for k, v in split.items() if v}},
            "per_sample": per}
