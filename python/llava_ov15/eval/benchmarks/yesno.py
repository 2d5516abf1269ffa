"""MME and POPE (yes/no questions, one image)."""

from __future__ import annotations

from ..scoring.mme import score_mme
from ..scoring.pope import score_pope
from .base import SHORT_ANSWER, Benchmark, Prompt, patterns, register

_MME_SUFFIX = " Please answer yes or no."


def mme_prompt(doc: dict) -> Prompt:
    q = doc["question"].strip().replace(_MME_SUFFIX, "")
    return Prompt(q + SHORT_ANSWER)


def pope_prompt(doc: dict) -> Prompt:
    return Prompt(doc["question"].strip() + SHORT_ANSWER)


register(Benchmark(
    name="mme", title="MME", hf_repo="lmms-lab/MME", folder="MME",
    patterns=patterns("data/test-*.parquet"),
    required=("question_id", "question", "answer", "category"),
    max_new_tokens=16, build_prompt=mme_prompt, score=score_mme,
    headline="total", headline_max=2800.0, breakdown="category",
    key=lambda d: f"{d['question_id']}", notes="perception /2000, cognition /800"))

register(Benchmark(
    name="pope", title="POPE", hf_repo="lmms-lab/POPE", folder="POPE",
    patterns=patterns("data/test-*.parquet"),
    required=("question_id", "question", "answer"),
    max_new_tokens=128, build_prompt=pope_prompt, score=score_pope,
    headline="f1", breakdown="category_f1", key=lambda d: str(d["question_id"])))
