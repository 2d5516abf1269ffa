"""MMBench CircularEval with rule-based option extraction (no LLM judge).

Extraction (the rule stage of the MMBench / lmms-eval evaluator, which precedes its GPT stage):
split the stripped answer on whitespace; if exactly one option letter (A-E) occurs as a bare token,
take it - unless "A" is a token of an answer with more than three tokens ("a" used as an article),
in which case this step is skipped; then for the decorated forms ``X.`` ``X,`` ``X:`` ``X)``
``X).`` ``(X)`` ``(X).`` ``:X`` ``:X,`` ``:X.`` ``:X)`` ``:X).`` in this order take the letter if
exactly one letter occurs in that form; finally, if exactly one option text (lower-cased) is a
substring of the lower-cased answer, take that option. Otherwise the answer is *unresolved*.

CircularEval: rows whose ``index % 1_000_000`` are equal are rotations of one question; the
question counts as correct only if every rotation is resolved and right. Where the official tool
would ask GPT to match an unresolved answer, here it simply counts as wrong, so scores are a lower
bound of the GPT-judged ones (identical whenever the model answers with a letter).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

_DECORATIONS = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."),
                (":", ""), (":", ","), (":", "."), (":", ")"), (":", ")."))
CIRCULAR_MOD = 1_000_000


def _present(v) -> bool:
    if v is None:
        return False
    if isinstance(v, float) and v != v:
        return False
    return str(v) != "nan" and str(v) != ""


def option_texts(doc: dict, letters: str = "ABCD") -> dict[str, str]:
    """Options of a row: letters in order while present (MMBench has at most A-D)."""
    return {c: str(doc[c]) for c in letters if c in doc and _present(doc[c])}


def extract_option(answer: str, options: dict[str, str], letters: str = "ABCDE") -> str | None:
    tokens = [t.strip() for t in answer.split()]

    def count(prefix: str = "", suffix: str = "") -> int:
        return sum(1 for c in letters if prefix + c + suffix in tokens)

    if count() == 1 and not ("A" in tokens and len(tokens) > 3):
        for c in letters:
            if c in tokens:
                return c
    for pre, suf in _DECORATIONS:
        if count(pre, suf) == 1:
            for c in letters:
                if pre + c + suf in tokens:
                    return c
    low = answer.lower()
    hits = [k for k, v in options.items() if v.lower() in low]
    return hits[0] if len(hits) == 1 else None


def score_mmbench(docs: Sequence[dict], preds: Sequence[str]) -> dict:
    """Overall, per-category and per-l2-category CircularEval accuracy (x100)."""
    extracted = [extract_option(str(p).strip(), option_texts(d))
                 for d, p in zip(docs, preds, strict=True)]
    rows_by_q: dict[int, list[int]] = defaultdict(list)
    for i, d in enumerate(docs):
        rows_by_q[int(d["index"]) % CIRCULAR_MOD].append(i)
    main = [i for i, d in enumerate(docs) if int(d["index"]) < CIRCULAR_MOD]
    # Questions whose main row is missing (partial runs) are judged on the rotations present.
    main_q = {int(docs[i]["index"]) for i in main}
    for q, rows in rows_by_q.items():
        if q not in main_q:
            main.append(rows[0])
    hit_by_q = {}
    for q, rows in rows_by_q.items():
        hit_by_q[q] = all(extracted[i] is not None and extracted[i] == str(docs[i]["answer"])
                          for i in rows)
    cats: dict[str, list[float]] = defaultdict(list)
    l2: dict[str, list[float]] = defaultdict(list)
    hits = []
    for i in sorted(main, key=lambda i: int(docs[i]["index"])):
        d = docs[i]
        h = 100.0 if hit_by_q[int(d["index"]) % CIRCULAR_MOD] else 0.0
        hits.append(h)
        cats[str(d.get("category"))].append(h)
        if "L2-category" in d:
            l2[str(d["L2-category"])].append(h)
    per_sample = [(100.0 if (e is not None and e == str(d["answer"])) else 0.0)
                  for d, e in zip(docs, extracted, strict=True)]
    return {
        "metrics": {"circular_accuracy": _mean(hits),
                    "single_pass_accuracy": _mean(per_sample),
                    "questions": float(len(hits)),
                    "unresolved_answers": float(sum(e is None for e in extracted))},
        "breakdowns": {"category": {k: _mean(v) for k, v in sorted(cats.items())},
                       "l2_category": {k: _mean(v) for k, v in sorted(l2.items())}},
        "per_sample": per_sample,
        "extracted": extracted,
    }


def mmbench_submission(docs: Sequence[dict], preds: Sequence[str]) -> list[dict]:
    """Rows for the MMBench evaluation server (index, question, options, prediction, ...)."""
    rows = []
    for d, p in zip(docs, preds, strict=True):
        row = {k: d.get(k) for k in ("index", "question", "hint", "A", "B", "C", "D", "answer",
                                     "category", "L2-category", "source", "split")}
        row["prediction"] = str(p).strip()
        rows.append(row)
    return rows


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0
