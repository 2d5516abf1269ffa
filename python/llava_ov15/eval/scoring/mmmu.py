"""MMMU rule-based answer parsing and accuracy (the MMMU authors' eval rules, as in lmms-eval).

Multiple choice: strip ``, . ! ? ; : '`` from both ends, pad with spaces; candidates are letters
written "(X)", else "X " , else "X.", else (only for answers of more than 5 words) options whose
text occurs in the answer; several candidates -> the one occurring last. When nothing matches the
official code guesses a random letter; here the answer is *unresolved* and counts as wrong, so the
score is deterministic (expected difference: 1/#options per unresolved answer).
Open questions: key sub-responses after indicator words ("could be", "so", "is", "thus",
"therefore", "final", "answer", "result", and "=" for the last sentence), plus every number found
in them; strings lower-cased, numbers rounded to 2 decimals; correct if a normalized gold string is
a substring of a predicted string or a gold number equals a predicted number.
Accuracy is micro-averaged over questions; per-subject and per-discipline breakdowns.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Sequence

DISCIPLINES = {
    "Art and Design": ["Art", "Art_Theory", "Design", "Music"],
    "Business": ["Accounting", "Economics", "Finance", "Manage", "Marketing"],
    "Science": ["Biology", "Chemistry", "Geography", "Math", "Physics"],
    "Health and Medicine": ["Basic_Medical_Science", "Clinical_Medicine",
                            "Diagnostics_and_Laboratory_Medicine", "Pharmacy", "Public_Health"],
    "Humanities and Social Science": ["History", "Literature", "Sociology", "Psychology"],
    "Tech and Engineering": ["Agriculture", "Architecture_and_Engineering", "Computer_Science",
                             "Electronics", "Energy_and_Power", "Materials",
                             "Mechanical_Engineering"],
}


def parse_options(doc: dict) -> list[str]:
    opts = doc["options"]
    return list(ast.literal_eval(opts)) if isinstance(opts, str) else list(opts)


def parse_multi_choice(response: str, options: Sequence[str]) -> str | None:
    choices = [chr(ord("A") + i) for i in range(len(options))]
    index2ans = dict(zip(choices, options, strict=True))
    for ch in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(ch)
    response = " " + response + " "
    cands: list[str] = []
    mode = "letter"
    cands = [c for c in choices if f"({c})" in response]
    if cands:
        mode = "bracket"
    if not cands:
        cands = [c for c in choices if f"{c} " in response]
    if not cands:
        cands = [c for c in choices if f"{c}." in response]
    if not cands and len(response.split()) > 5:
        cands = [c for c, a in index2ans.items() if str(a).lower() in response.lower()]
        mode = "text"
    if not cands:
        return None
    if len(cands) == 1:
        return cands[0]
    if mode == "bracket":
        pos = [response.rfind(f"({c})") for c in cands]
    elif mode == "letter":
        pos = [response.rfind(f" {c} ") for c in cands]
    else:
        pos = [response.lower().rfind(str(index2ans[c]).lower()) for c in cands]
    return cands[max(range(len(pos)), key=lambda i: (pos[i], -i))]


_NUM_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUM_SCI = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUM_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")


def extract_numbers(text: str) -> list[str]:
    return _NUM_COMMAS.findall(text) + _NUM_SCI.findall(text) + _NUM_SIMPLE.findall(text)


def _is_number(s: str) -> bool:
    try:
        float(s.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_str(s: str) -> list:
    s = s.strip()
    if _is_number(s):
        return [round(float(s.replace(",", "")), 2)]
    s = s.lower()
    return [" " + s, s + " "] if len(s) == 1 else [s]


_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")


def parse_open(response: str) -> list:
    resp = response.strip().strip(".").lower()
    subs = re.split(r"\.\s(?=[A-Z])|\n", resp)
    keys = []
    for i, sub in enumerate(subs):
        inds = _INDICATORS + (("=",) if i == len(subs) - 1 else ())
        best = None
        for ind in inds:
            if ind in sub:
                tail = sub.split(ind)[-1].strip()
                if best is None or len(tail) < len(best):
                    best = tail
        if best and best.strip() not in (":", ",", ".", "!", "?", ";", "'"):
            keys.append(best)
    if not keys:
        keys = [resp]
    preds = list(keys)
    for k in keys:
        preds.extend(extract_numbers(k))
    out = []
    for p in preds:
        out.extend(normalize_str(p))
    uniq = []
    for p in out:  # order-preserving de-duplication (the official code uses a set)
        if p not in uniq:
            uniq.append(p)
    return uniq


def eval_open(gold, preds: Sequence) -> bool:
    golds = []
    for g in (gold if isinstance(gold, list) else [gold]):
        golds.extend(normalize_str(str(g)))
    for p in preds:
        if isinstance(p, str):
            if any(isinstance(g, str) and g in p for g in golds):
                return True
        elif p in golds:
            return True
    return False


def _gold(doc: dict):
    """The gold answer verbatim (a letter, a string, or a list where the data hold one)."""
    a = doc["answer"]
    return list(a) if isinstance(a, (list, tuple)) else a


def subject_of(doc_id: str) -> str:
    m = re.match(rf"^{re.escape(doc_id.split('_')[0])}_(.+?)_\d+$", doc_id)
    if not m:
        raise ValueError(f"MMMU id {doc_id!r} is not '<split>_<Subject>_<n>'")
    return m.group(1)


def score_mmmu(docs: Sequence[dict], preds: Sequence[str]) -> dict:
    per = []
    unresolved = 0
    for d, p in zip(docs, preds, strict=True):
        gold = _gold(d)
        if d["question_type"] == "multiple-choice":
            letter = parse_multi_choice(p, parse_options(d))
            unresolved += letter is None
            ok = letter is not None and (letter in gold if isinstance(gold, list)
                                         else letter == gold)
        else:
            ok = eval_open(gold, parse_open(p))
        per.append(100.0 if ok else 0.0)
    by_subj: dict[str, list[float]] = defaultdict(list)
    for d, s in zip(docs, per, strict=True):
        by_subj[subject_of(str(d["id"]))].append(s)
    by_disc = {}
    for disc, subs in DISCIPLINES.items():
        vals = [s for sub in subs for s in by_subj.get(sub, [])]
        if vals:
            by_disc[disc] = sum(vals) / len(vals)
    return {
        "metrics": {"accuracy": sum(per) / len(per) if per else 0.0,
                    "unresolved_multiple_choice": float(unresolved)},
        "breakdowns": {"discipline": by_disc,
                       "subject": {k: sum(v) / len(v) for k, v in sorted(by_subj.items())}},
        "per_sample": per,
    }
