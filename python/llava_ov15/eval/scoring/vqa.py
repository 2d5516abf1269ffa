"""VQA answer normalization and the 10-annotator accuracy (official VQA evaluation rules).

Rules (from the official VQA evaluation script, as also used by EvalAI and lmms-eval):

* punctuation: for each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` the character is deleted
  when it touches a space anywhere in the *input* (``"p "`` or ``" p"``) or when the input
  contains a digit-comma-digit sequence (``1,000``); otherwise it is replaced by a space. Then a
  period is deleted unless a digit follows it (``3.5`` keeps it, ``3.`` loses it). The official
  script passes ``re.UNICODE`` (= 32) as the *count* argument of ``Pattern.sub``, so at most 32
  periods are removed; reproduced here.
* digits/articles: lower-case, split on whitespace, map number words ``none zero one … ten`` to
  digits, drop ``a an the``, then expand contractions written without apostrophe (``dont`` ->
  ``don't``), and join with single spaces.
* accuracy: for each of the N (=10) human answers, the fraction min(1, #matches among the other
  N-1 answers / 3); the question's accuracy is the mean over the N leave-one-out subsets.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Sequence

_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
          "`", ",", "?", "!")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The official pattern starts with "(?!<=\d)" - a *lookahead* (not a lookbehind) that can never
# fail at a '.', so in effect: delete every '.' that is not followed by a digit.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_OFFICIAL_SUB_COUNT = 32  # re.UNICODE passed positionally as `count` in the official script

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})

# The official contraction table, as "written-form=expanded-form" pairs. Keys containing capitals
# ("Im", "Ive", "Id've", "I'dve") can never match after lower-casing; kept for fidelity.
_CONTRACTION_PAIRS = """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd
itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll
somebodys=somebody's someoned=someone'd someoned've=someone'd've someone'dve=someone'd've
someonell=someone'll someones=someone's somethingd=something'd somethingd've=something'd've
something'dve=something'd've somethingll=something'll thats=that's thered=there'd
thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas
wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll
whatre=what're whats=what's whatve=what've whens=when's whered=where'd wheres=where's
whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
"""
CONTRACTIONS = dict(p.split("=", 1) for p in _CONTRACTION_PAIRS.split())


def process_punctuation(text: str) -> str:
    out = text
    has_digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_OFFICIAL_SUB_COUNT)


def process_digit_article(text: str) -> str:
    words = []
    for w in text.lower().split():
        w = NUMBER_WORDS.get(w, w)
        if w not in ARTICLES:
            words.append(w)
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """Whitespace clean-up, punctuation, then digits/articles/contractions."""
    return process_digit_article(process_punctuation(clean_whitespace(text)))


def evalai_normalize(text: str) -> str:
    """EvalAI's answer processor (used by TextVQA in lmms-eval): first lower-case, drop ',' and '?',
    split "'s" off as " 's", then the official normalization."""
    t = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_answer(t)


def leave_one_out_accuracy(pred: str, gts: Sequence[str]) -> float:
    """Mean over leave-one-out subsets of min(1, matches/3); inputs already normalized."""
    if not gts:
        return 0.0
    accs = []
    for i in range(len(gts)):
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == pred)
        accs.append(min(1.0, matches / 3.0))
    return statistics.mean(accs)


def vqa_accuracy(pred: str, gt_answers: Sequence[str], *, strict_official: bool = False) -> float:
    """Accuracy of one prediction against the human answers, in [0, 1].

    By default both sides are always normalized (lmms-eval; and what EvalAI scores, since the
    submission file holds normalized answers). ``strict_official=True`` reproduces the offline
    official script exactly: when all human answers are identical, neither side is normalized
    beyond whitespace clean-up.
    """
    gts = [clean_whitespace(g) for g in gt_answers]
    res = clean_whitespace(pred)
    if not strict_official or len(set(gts)) > 1:
        gts = [process_digit_article(process_punctuation(g)) for g in gts]
        res = process_digit_article(process_punctuation(res))
    return leave_one_out_accuracy(res, gts)


def _answers(doc: dict) -> list[str]:
    ans = doc["answers"]
    return [a["answer"] if isinstance(a, dict) else a for a in ans]


def score_vqav2(docs: Sequence[dict], preds: Sequence[str], *,
                strict_official: bool = False) -> dict:
    """VQAv2: overall, per question type and per answer type accuracy (x100)."""
    per = [vqa_accuracy(p, _answers(d), strict_official=strict_official) * 100.0
           for d, p in zip(docs, preds, strict=True)]
    by_q: dict[str, list[float]] = defaultdict(list)
    by_a: dict[str, list[float]] = defaultdict(list)
    for d, s in zip(docs, per, strict=True):
        if d.get("question_type") is not None:
            by_q[d["question_type"]].append(s)
        if d.get("answer_type") is not None:
            by_a[d["answer_type"]].append(s)
    return {
        "metrics": {"accuracy": _mean(per)},
        "breakdowns": {"answer_type": {k: _mean(v) for k, v in sorted(by_a.items())},
                       "question_type": {k: _mean(v) for k, v in sorted(by_q.items())}},
        "per_sample": per,
    }


def score_textvqa(docs: Sequence[dict], preds: Sequence[str]) -> dict:
    """TextVQA (lmms-eval): EvalAI processor on both sides, then leave-one-out accuracy (x100)."""
    per = []
    for d, p in zip(docs, preds, strict=True):
        gts = [evalai_normalize(a) for a in _answers(d)]
        per.append(leave_one_out_accuracy(evalai_normalize(p), gts) * 100.0)
    return {"metrics": {"accuracy": _mean(per)}, "breakdowns": {}, "per_sample": per}


def vqav2_submission(docs: Sequence[dict], preds: Sequence[str]) -> list[dict]:
    """EvalAI submission entries: normalized answers keyed by question_id."""
    return [{"question_id": int(d["question_id"]), "answer": normalize_answer(p)}
            for d, p in zip(docs, preds, strict=True)]


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0
