"""Exact-match families from lmms-eval: GQA, AI2D (letter filter) and ScienceQA-IMG."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

_PUNCT_TABLE = str.maketrans("", "", string.punctuation)
_LEADING_LETTER = re.compile(r"^\s*([A-Z])\.")


def exact_match(pred: str, target: str) -> bool:
    """lmms-eval `exact_match` with ignore_case and ignore_punctuation (ASCII punctuation)."""
    return pred.lower().translate(_PUNCT_TABLE) == target.lower().translate(_PUNCT_TABLE)


def letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def ai2d_filter(pred: str) -> str:
    """AI2D response filter: a leading "X." gives the letter X, else the response unchanged."""
    m = _LEADING_LETTER.match(pred)
    return m.group(1) if m else pred


def ai2d_target(doc: dict) -> str:
    return letters(len(doc["options"]))[int(doc["answer"])]


def sqa_target(doc: dict) -> str:
    return letters(len(doc["choices"]))[int(doc["answer"])]


def sqa_correct(pred: str, target: str) -> bool:
    """ScienceQA (LLaVA rule): the answer is the letter, or starts "X." with X right."""
    pred = pred.strip()
    t = target.strip().lower()
    if pred.lower() == t:
        return True
    return len(pred) >= 2 and pred[0].isupper() and pred[1] == "." and pred[0].lower() == t


def _result(per: list[float], name: str = "accuracy") -> dict:
    return {"metrics": {name: sum(per) / len(per) if per else 0.0}, "breakdowns": {},
            "per_sample": per}


def score_gqa(docs: Sequence[dict], preds: Sequence[str]) -> dict:
    return _result([100.0 if exact_match(p, str(d["answer"])) else 0.0
                    for d, p in zip(docs, preds, strict=True)])


def score_ai2d(docs: Sequence[dict], preds: Sequence[str]) -> dict:
    return _result([100.0 if exact_match(ai2d_filter(p), ai2d_target(d)) else 0.0
                    for d, p in zip(docs, preds, strict=True)])


def score_scienceqa(docs: Sequence[dict], preds: Sequence[str]) -> dict:
    return _result([100.0 if sqa_correct(p, sqa_target(d)) else 0.0
                    for d, p in zip(docs, preds, strict=True)])
