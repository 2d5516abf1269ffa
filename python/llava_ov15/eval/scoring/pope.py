"""POPE (lmms-eval): exact match of the lower-cased, stripped prediction to "yes"/"no";
accuracy, precision/recall/F1 of the "yes" class, and the ratio of "yes" ground truths."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence


def _prf(pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    tp = sum(1 for p, g in pairs if g == "yes" and p == "yes")
    fp = sum(1 for p, g in pairs if g == "no" and p == "yes")
    fn = sum(1 for p, g in pairs if g == "yes" and p == "no")
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    acc = sum(1 for p, g in pairs if p == g) / len(pairs) if pairs else 0.0
    yes = sum(1 for _, g in pairs if g == "yes")
    return {"accuracy": acc * 100, "precision": prec * 100, "recall": rec * 100, "f1": f1 * 100,
            "yes_ratio": (yes / len(pairs) * 100) if pairs else 0.0}


def score_pope(docs: Sequence[dict], preds: Sequence[str]) -> dict:
    pairs = []
    for d, p in zip(docs, preds, strict=True):
        g = d["answer"].lower().strip()
        if g not in ("yes", "no"):
            raise ValueError(f"POPE answer must be yes/no, got {d['answer']!r}")
        pairs.append((p.lower().strip(), g))
    by_cat: dict[str, list] = defaultdict(list)
    for d, pr in zip(docs, pairs, strict=True):
        by_cat[str(d.get("category"))].append(pr)
    return {
        "metrics": _prf(pairs),
        "breakdowns": {"category_f1": {k: _prf(v)["f1"] for k, v in sorted(by_cat.items())},
                       "category_accuracy": {k: _prf(v)["accuracy"]
                                             for k, v in sorted(by_cat.items())}},
        "per_sample": [100.0 if p == g else 0.0 for p, g in pairs],
    }
