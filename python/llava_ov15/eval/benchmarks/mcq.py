"""Multiple-choice families: MMBench (en/cn, dev/test), AI2D, ScienceQA-IMG, MMMU."""

from __future__ import annotations

import re

from ..scoring.exact import letters, score_ai2d, score_scienceqa
from ..scoring.mmbench import mmbench_submission, score_mmbench
from ..scoring.mmmu import parse_options, score_mmmu
from .base import LETTER_ANSWER, Benchmark, Prompt, is_missing, patterns, register

MMBENCH_POST = {"en": "\nAnswer with the option's letter from the given choices directly.",
                "cn": "\n请直接使用所提供的选项字母作为答案回答。"}


def mmbench_prompt(lang: str):
    def build(doc: dict) -> Prompt:
        opts = "There are several options:\n"
        for c in "ABCDE":
            v = doc.get(c)
            if v and not is_missing(v) and v != "nan":
                opts += f"{c}. {v}\n"
        opts = opts.rstrip("\n")
        hint = doc.get("hint")
        has_hint = not is_missing(hint) and (lang != "en" or hint != "nan")
        q = f"{hint} {doc['question']} {opts}" if has_hint else f"{doc['question']} {opts}"
        return Prompt(f"{q}\n{MMBENCH_POST[lang]}")
    return build


_MMB_COLS = ("index", "question", "hint", "A", "B", "answer", "category", "L2-category")
for _lang, _max in (("en", 1024), ("cn", 256)):
    for _split in ("dev", "test"):
        register(Benchmark(
            name=f"mmbench_{_lang}_{_split}", title=f"MMBench-{_lang.upper()} {_split}",
            hf_repo="lmms-lab/MMBench", folder="MMBench",
            patterns=patterns(f"{_lang}/{_split}-*.parquet"), required=_MMB_COLS,
            max_new_tokens=_max, build_prompt=mmbench_prompt(_lang),
            score=score_mmbench if _split == "dev" else None,
            headline="circular_accuracy" if _split == "dev" else None,
            until=("ASSISTANT:",) if _lang == "en" else (),
            submission=mmbench_submission,
            submission_file=f"mmbench_{_lang}_{_split}_submission.jsonl",
            breakdown="category", key=lambda d: str(d["index"]),
            notes="CircularEval, rule-based extraction (no LLM judge)"))


def ai2d_prompt(doc: dict) -> Prompt:
    opts = list(doc["options"])
    choices = "\n".join(f"{c}. {o}" for c, o in zip(letters(len(opts)), opts, strict=True))
    return Prompt(f"{doc['question']}\n{choices}{LETTER_ANSWER}")


register(Benchmark(
    name="ai2d", title="AI2D", hf_repo="lmms-lab/ai2d", folder="ai2d",
    patterns=patterns("data/test-*.parquet"), required=("question", "options", "answer"),
    max_new_tokens=16, build_prompt=ai2d_prompt, score=score_ai2d, headline="accuracy"))


def sqa_prompt(doc: dict) -> Prompt:
    ch = list(doc["choices"])
    choices = "\n".join(f"{c}. {o}" for c, o in zip(letters(len(ch)), ch, strict=True))
    context = doc.get("hint")
    if context:
        context = f"Context: {context}\n"
    # lmms-eval formats a falsy hint as is: "" adds nothing (None would print "None")
    return Prompt(f"{context}{doc['question']}\n{choices}{LETTER_ANSWER}")


register(Benchmark(
    name="scienceqa_img", title="ScienceQA-IMG", hf_repo="lmms-lab/ScienceQA",
    folder="ScienceQA", patterns=patterns("ScienceQA-IMG/test-*.parquet"),
    required=("question", "choices", "answer", "hint"), max_new_tokens=16,
    build_prompt=sqa_prompt, score=score_scienceqa, headline="accuracy"))

MMMU_MC = "Answer with the option's letter from the given choices directly."
MMMU_OPEN = "Answer the question using a single word or phrase."
_IMG_TOKEN = re.compile(r"<image \d+>")


def mmmu_text(doc: dict) -> str:
    q = doc["question"]
    if doc["question_type"] == "multiple-choice":
        opts = parse_options(doc)
        listed = "\n".join(f"{c}. {o}" for c, o in zip(letters(len(opts)), opts, strict=True))
        return f"{q}\n{listed}\n\n{MMMU_MC}"
    return f"{q}\n\n{MMMU_OPEN}"


def mmmu_prompt(doc: dict) -> Prompt:
    """Interleaved like lmms-eval's doc_to_messages: "<image i>" marks become image slots."""
    text = mmmu_text(doc)
    cols = tuple(sorted({t.strip("<>").replace(" ", "_") for t in _IMG_TOKEN.findall(text)}))
    parts = _IMG_TOKEN.sub("<image>", text).split("<image>")
    content: list[str | int] = []
    for i in range(len(cols)):
        if i < len(parts) - 1 and parts[i].strip():
            content.append(parts[i].strip())
        content.append(i)
    content.append(parts[-1].strip())
    return Prompt(text, images=cols, content=tuple(content))


register(Benchmark(
    name="mmmu_val", title="MMMU val", hf_repo="lmms-lab/MMMU", folder="MMMU",
    patterns=patterns("data/validation-*.parquet"),
    required=("id", "question", "options", "answer", "question_type"),
    image_columns=tuple(f"image_{i}?" for i in range(1, 8)),
    max_new_tokens=128, build_prompt=mmmu_prompt, score=score_mmmu, headline="accuracy",
    breakdown="discipline", key=lambda d: str(d["id"]),
    notes="rule-based parsing; unresolved multiple-choice answers count wrong"))
