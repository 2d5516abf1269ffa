"""COCO Caption 2017 val."""

from __future__ import annotations

from ..scoring.coco import coco_results_file, score_coco
from .base import Benchmark, Prompt, patterns, register

COCO_PROMPT = "Provide a one-sentence caption for the provided image."


def coco_prompt(doc: dict) -> Prompt:
    return Prompt(COCO_PROMPT)


register(Benchmark(
    name="coco2017_cap_val", title="COCO Caption 2017 val", hf_repo="lmms-lab/COCO-Caption2017",
    folder="COCO-Caption2017", patterns=patterns("data/val-*.parquet"),
    required=("question_id", "answer"), max_new_tokens=64, build_prompt=coco_prompt,
    score=score_coco, headline="CIDEr_x100", headline_max=150.0,
    submission=coco_results_file, submission_file="coco2017_val_captions_results.json",
    key=lambda d: str(d["question_id"]), notes="SPICE not computed",
    external_scorer=True))
