"""OCRBench (lmms-eval): substring match, final score out of 1000 (reported /10 as a percent).

Prediction and each reference: fold full-width ASCII (U+FF01..U+FF5E) and the ideographic space,
lower-case, strip, newlines -> spaces; correct if any reference is a substring of the prediction.
For the HME100k subset (formulas) no case folding; all spaces removed on both sides instead.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

CATEGORIES = ("Regular Text Recognition", "Irregular Text Recognition",
              "Artistic Text Recognition", "Handwriting Recognition", "Digit String Recognition",
              "Non-Semantic Text Recognition", "Scene Text-centric VQA", "Doc-oriented VQA",
              "Key Information Extraction", "Handwritten Mathematical Expression Recognition")
RECOGNITION = CATEGORIES[:6]


def fold_fullwidth(text: str) -> str:
    out = []
    for ch in text:
        cp = ord(ch)
        if 0xFF01 <= cp <= 0xFF5E:
            out.append(chr(cp - 0xFEE0))
        elif cp == 0x3000:
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def ocrbench_correct(pred: str, answers, dataset: str) -> bool:
    refs = list(answers) if isinstance(answers, (list, tuple)) else [answers]
    pred = pred.strip()
    for ref in refs:
        if dataset == "HME100k":
            a = ref.strip().replace("\n", " ").replace(" ", "")
            p = pred.strip().replace("\n", " ").replace(" ", "")
        else:
            a = fold_fullwidth(ref).lower().strip().replace("\n", " ")
            p = fold_fullwidth(pred).lower().strip().replace("\n", " ")
        if a in p:
            return True
    return False


def score_ocrbench(docs: Sequence[dict], preds: Sequence[str]) -> dict:
    per = [1.0 if ocrbench_correct(p, d["answer"], str(d.get("dataset"))) else 0.0
           for d, p in zip(docs, preds, strict=True)]
    by_type: dict[str, float] = defaultdict(float)
    for d, s in zip(docs, per, strict=True):
        by_type[d["question_type"]] += s
    final = sum(per)
    return {
        "metrics": {"accuracy": final / 10.0, "final_score": final,
                    "text_recognition": sum(by_type.get(c, 0.0) for c in RECOGNITION)},
        "breakdowns": {"question_type_points": {c: by_type[c] for c in CATEGORIES if c in by_type}},
        "per_sample": [s * 100.0 for s in per],
        "notes": ([] if len(per) == 1000 else
                  [f"{len(per)} samples: 'accuracy' is points/10, comparable only on all 1000"]),
    }
