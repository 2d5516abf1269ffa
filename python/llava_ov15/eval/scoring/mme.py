"""MME scoring (lmms-eval / the MME authors' tool).

Answer parsing: lower-case, strip, delete '.'; "yes"/"no" as is; a single character "y"/"n" maps
to yes/no (anything else of length 1 is "other"); otherwise the first four characters decide:
"yes" in them -> yes, else "no" in them -> no, else "other".
Per image (two questions sharing ``question_id`` within a category): acc = mean correct x 100,
acc+ = 100 if both are right. Category score = mean over images of acc + acc+ (max 200).
Perception = sum of 10 category scores (max 2000), cognition = sum of 4 (max 800).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
              "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation",
             "code_reasoning")


def parse_yes_no(pred: str) -> str:
    p = pred.lower().strip().replace(".", "")
    if p in ("yes", "no"):
        return p
    if len(p) == 1:
        return {"y": "yes", "n": "no"}.get(p, "other")
    head = p[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def score_mme(docs: Sequence[dict], preds: Sequence[str]) -> dict:
    per = []
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for d, p in zip(docs, preds, strict=True):
        gt = d["answer"].lower().strip().replace(".", "")
        if gt not in ("yes", "no"):
            raise ValueError(f"MME answer must be yes/no, got {d['answer']!r}")
        s = 1.0 if parse_yes_no(p) == gt else 0.0
        per.append(s)
        groups[d["category"]][str(d["question_id"])].append(s)
    cat_scores: dict[str, float] = {}
    incomplete = 0
    for cat, by_img in groups.items():
        total = 0.0
        for scores in by_img.values():
            if len(scores) != 2:
                incomplete += 1
            acc = sum(scores) / len(scores) * 100.0
            acc_plus = 100.0 if all(s == 1.0 for s in scores) else 0.0
            total += acc + acc_plus
        cat_scores[cat] = total / len(by_img)
    perception = sum(v for k, v in cat_scores.items() if k in PERCEPTION)
    cognition = sum(v for k, v in cat_scores.items() if k in COGNITION)
    notes = []
    if incomplete:
        notes.append(f"{incomplete} image(s) without exactly 2 questions (partial run?)")
    unknown = sorted(set(cat_scores) - set(PERCEPTION) - set(COGNITION))
    if unknown:
        notes.append(f"categories outside perception/cognition: {unknown}")
    ordered = {c: cat_scores[c] for c in PERCEPTION + COGNITION if c in cat_scores}
    ordered.update({c: cat_scores[c] for c in unknown})
    return {
        "metrics": {"perception": perception, "cognition": cognition,
                    "total": perception + cognition,
                    "question_accuracy": 100.0 * sum(per) / len(per) if per else 0.0},
        "breakdowns": {"category": ordered},
        "per_sample": [s * 100.0 for s in per],
        "notes": notes,
    }
