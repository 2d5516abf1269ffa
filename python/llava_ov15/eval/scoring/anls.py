"""ANLS for DocVQA / InfographicVQA (lmms-eval's `anls` metric).

For each reference: normalize both sides (strip, lower-case, collapse whitespace), NL = Levenshtein
distance / max(len(reference), len(prediction)) with the lengths of the *unnormalized* strings
(as lmms-eval does). Question score = 1 - min NL over references, set to 0 when below the 0.5
threshold. (The official ST-VQA/DocVQA definition zeroes per-reference values with NL >= 0.5; the
two differ only when the best NL is exactly 0.5.)
"""

from __future__ import annotations

from collections.abc import Sequence


def levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def anls(pred: str, references: Sequence[str], threshold: float = 0.5) -> float:
    values = []
    det = " ".join(pred.strip().lower().split())
    for ref in references:
        gt = " ".join(ref.strip().lower().split())
        length = max(len(ref.upper()), len(pred.upper()))
        values.append(0.0 if length == 0 else levenshtein(gt, det) / length)
    if not values:
        return 0.0
    score = 1.0 - min(values)
    return 0.0 if score < threshold else score


def score_anls(docs: Sequence[dict], preds: Sequence[str]) -> dict:
    per = [anls(p, list(d["answers"])) * 100.0 for d, p in zip(docs, preds, strict=True)]
    return {"metrics": {"anls": sum(per) / len(per) if per else 0.0}, "breakdowns": {},
            "per_sample": per}
