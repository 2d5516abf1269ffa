"""Short-answer VQA families: VQAv2, GQA, TextVQA, DocVQA, InfoVQA, ChartQA, OCRBench."""

from __future__ import annotations

from pathlib import Path

from ..data import DataError, ParquetTable, find_files
from ..scoring.anls import score_anls
from ..scoring.exact import score_gqa
from ..scoring.ocrbench import score_ocrbench
from ..scoring.relaxed import score_chartqa
from ..scoring.vqa import score_textvqa, score_vqav2, vqav2_submission
from .base import SHORT_ANSWER, Benchmark, Prompt, patterns, register


def short_prompt(doc: dict) -> Prompt:
    return Prompt(f"{doc['question']}{SHORT_ANSWER}")


_VQAV2_COLS = ("question_id", "question", "image_id")
register(Benchmark(
    name="vqav2_val", title="VQAv2 val", hf_repo="lmms-lab/VQAv2", folder="VQAv2",
    patterns=patterns("data/validation-*.parquet"),
    required=_VQAV2_COLS + ("answers", "question_type", "answer_type"),
    max_new_tokens=16, build_prompt=short_prompt, score=score_vqav2, headline="accuracy",
    breakdown="answer_type", key=lambda d: str(d["question_id"]),
    submission=vqav2_submission, submission_file="vqav2_val_answers.json"))
register(Benchmark(
    name="vqav2_testdev", title="VQAv2 test-dev", hf_repo="lmms-lab/VQAv2", folder="VQAv2",
    patterns=patterns("data/testdev-*.parquet"), required=_VQAV2_COLS,
    max_new_tokens=16, build_prompt=short_prompt, score=None,
    key=lambda d: str(d["question_id"]),
    submission=vqav2_submission, submission_file="vqav2_testdev_submission.json",
    notes="no answers: writes the EvalAI submission file"))


class _GQATable(ParquetTable):
    """GQA questions with images joined from the separate images table by imageId."""

    def __init__(self, questions: list[Path], images: list[Path]):
        super().__init__(questions, ("id", "imageId", "question", "answer"), ())
        self._images = ParquetTable(images, ("id",), ("image",))
        self._row_of = {str(d["id"]): i for i, d in enumerate(self._images.docs)}

    def image(self, i: int, column: str):
        image_id = str(self.docs[i]["imageId"])
        if image_id not in self._row_of:
            raise DataError(f"GQA image {image_id!r} not found in {self._images.files}")
        return self._images.image(self._row_of[image_id], "image")


def _load_gqa(b: Benchmark, root: Path) -> ParquetTable:
    q = find_files(root, patterns("testdev_balanced_instructions/testdev-*.parquet"))
    im = find_files(root, ("testdev_balanced_images/testdev-*.parquet",))
    return _GQATable(q, im)


register(Benchmark(
    name="gqa", title="GQA testdev-balanced", hf_repo="lmms-lab/GQA", folder="GQA",
    patterns=(), required=(), max_new_tokens=16, build_prompt=short_prompt,
    score=score_gqa, headline="accuracy", loader=_load_gqa, key=lambda d: str(d["id"])))


def textvqa_prompt(doc: dict) -> Prompt:
    return Prompt(f"{doc['question'].capitalize()}{SHORT_ANSWER}")


register(Benchmark(
    name="textvqa_val", title="TextVQA val", hf_repo="lmms-lab/textvqa", folder="textvqa",
    patterns=patterns("data/validation-*.parquet"),
    required=("question_id", "question", "answers"), max_new_tokens=128,
    build_prompt=textvqa_prompt, score=score_textvqa, headline="accuracy",
    until=("ASSISTANT:",), key=lambda d: str(d["question_id"])))

for _name, _title, _sub in (("docvqa_val", "DocVQA val", "DocVQA"),
                            ("infovqa_val", "InfoVQA val", "InfographicVQA")):
    register(Benchmark(
        name=_name, title=_title, hf_repo="lmms-lab/DocVQA", folder="DocVQA",
        patterns=patterns(f"{_sub}/validation-*.parquet"),
        required=("questionId", "question", "answers"), max_new_tokens=32,
        build_prompt=short_prompt, score=score_anls, headline="anls",
        key=lambda d: str(d["questionId"])))


def chartqa_prompt(doc: dict) -> Prompt:
    return Prompt(f"{doc['question']}\nAnswer the question with a single word.")


register(Benchmark(
    name="chartqa", title="ChartQA test", hf_repo="lmms-lab/ChartQA", folder="ChartQA",
    patterns=patterns("data/test-*.parquet"), required=("question", "answer", "type"),
    max_new_tokens=16, build_prompt=chartqa_prompt, score=score_chartqa,
    headline="relaxed_overall", breakdown="split"))


def ocrbench_prompt(doc: dict) -> Prompt:
    return Prompt(doc["question"].strip())


register(Benchmark(
    name="ocrbench", title="OCRBench", hf_repo="echo840/OCRBench", folder="OCRBench",
    patterns=patterns("data/test-*.parquet"),
    required=("dataset", "question", "question_type", "answer"), max_new_tokens=128,
    build_prompt=ocrbench_prompt, score=score_ocrbench, headline="accuracy",
    breakdown="question_type_points"))
