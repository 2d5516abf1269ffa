"""Scorers against hand-derived expectations from the official rules (no model, no data files)."""

from __future__ import annotations

import pytest

from llava_ov15.eval.scoring import anls as anls_mod
from llava_ov15.eval.scoring import exact, mmbench, mme, mmmu, ocrbench, pope, relaxed, vqa


@pytest.mark.parametrize("raw,expected", [
    ("1,000", "1000"),                 # digit-comma-digit: punctuation deleted, not spaced
    ("1,000 dogs", "1000 dogs"),
    ("1,000-2,000", "10002000"),       # the digit comma makes *every* listed mark vanish
    ("1,,2", "1 2"),                   # official regex needs exactly one comma between digits
    ("10 000", "10 000"),
    ("red, white", "red white"),       # ", " touches a space: deleted
    ("red,white", "red white"),        # otherwise replaced by a space
    ("t-shirt", "t shirt"),
    ("yes!", "yes"),
    ("(yes)", "yes"),
    ("Yes.", "yes"),
    ("two", "2"),
    ("Two dogs", "2 dogs"),
    ("none", "0"),
    ("the cat.", "cat"),
    ("a dog", "dog"),
    ("an apple", "apple"),
    ("dont", "don't"),
    ("Dont", "don't"),
    ("couldn'tve", "couldn't've"),
    ("somebody'd", "somebodyd"),       # the official table maps this one "backwards"
    ("Im", "im"),                      # capitalized keys never match after lower-casing
    ("it's", "it's"),
    ("3.5", "3.5"),                    # period followed by a digit survives
    ("3.", "3"),
    (".5", ".5"),
    ("e.g.", "eg"),
    ("one two three", "1 2 3"),
    ("  left\tside\n", "left side"),
    ("." * 33, "."),                   # re.UNICODE passed as count: only 32 periods removed
    ("black/white", "black white"),
    ("50%", "50%"),
    ("$5", "$5"),
])
def test_vqa_normalization(raw, expected):
    assert vqa.normalize_answer(raw) == expected


def test_vqa_leave_one_out_accuracy():
    gts = ["yes"] * 3 + ["no"] * 7
    assert vqa.vqa_accuracy("yes", gts) == pytest.approx(0.9)   # (3*2/3 + 7*1)/10
    assert vqa.vqa_accuracy("no", gts) == pytest.approx(1.0)
    assert vqa.vqa_accuracy("Yes.", ["yes"] + ["no"] * 9) == pytest.approx(0.3)
    assert vqa.vqa_accuracy("yes", ["yes"] * 2 + ["no"] * 8) == pytest.approx(0.6)
    assert vqa.vqa_accuracy("maybe", gts) == 0.0
    assert vqa.vqa_accuracy("Two", ["2"] * 10) == 1.0


def test_vqa_strict_official_unanimous_quirk():
    # The offline official script normalizes only when the human answers disagree.
    assert vqa.vqa_accuracy("Yes.", ["yes"] * 10, strict_official=True) == 0.0
    assert vqa.vqa_accuracy("Yes.", ["yes"] * 10) == 1.0
    assert vqa.vqa_accuracy("Yes.", ["yes"] * 9 + ["no"], strict_official=True) == 1.0


def test_vqav2_breakdowns():
    def doc(qt, at, answers):
        return {"question_type": qt, "answer_type": at,
                "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)]}
    docs = [doc("is the", "yes/no", ["yes"] * 10), doc("how many", "number", ["2"] * 10),
            doc("how many", "number", ["3"] * 10)]
    r = vqa.score_vqav2(docs, ["Yes", "two", "4"])
    assert r["per_sample"] == [100.0, 100.0, 0.0]
    assert r["metrics"]["accuracy"] == pytest.approx(200 / 3)
    assert r["breakdowns"]["answer_type"] == {"number": 50.0, "yes/no": 100.0}
    assert r["breakdowns"]["question_type"] == {"how many": 50.0, "is the": 100.0}
    assert vqa.vqav2_submission([{"question_id": "7"}], ["Two."]) == [
        {"question_id": 7, "answer": "2"}]


def test_textvqa_evalai_processor():
    assert vqa.evalai_normalize("What's up?") == "what 's up"
    assert vqa.evalai_normalize("1,000") == "1000"
    r = vqa.score_textvqa([{"answers": ["Coca-Cola"] * 10}], ["coca cola"])
    assert r["metrics"]["accuracy"] == 100.0


@pytest.mark.parametrize("pred,label", [
    ("Yes", "yes"), ("No.", "no"), ("yes, there is", "yes"), ("y", "yes"), ("N", "no"),
    ("x", "other"), ("There is no dog", "other"), ("Not at all", "no"), ("nope", "no"),
    ("I think yes", "other"), ("", "other"),
])
def test_mme_parse(pred, label):
    assert mme.parse_yes_no(pred) == label


def test_mme_hand_computed():
    docs = [
        {"question_id": "count/1.jpg", "category": "count", "answer": "Yes"},
        {"question_id": "count/1.jpg", "category": "count", "answer": "No"},
        {"question_id": "count/2.jpg", "category": "count", "answer": "Yes"},
        {"question_id": "count/2.jpg", "category": "count", "answer": "No"},
        {"question_id": "code/1.png", "category": "code_reasoning", "answer": "Yes"},
        {"question_id": "code/1.png", "category": "code_reasoning", "answer": "No"},
        {"question_id": "code/2.png", "category": "code_reasoning", "answer": "No"},
        {"question_id": "code/2.png", "category": "code_reasoning", "answer": "No"},
    ]
    preds = ["Yes", "No", "Yes", "Yes", "No", "Yes", "no.", "No"]
    r = mme.score_mme(docs, preds)
    # count: image1 100+100, image2 50+0 -> 125; code: image1 0+0, image2 100+100 -> 100
    assert r["breakdowns"]["category"] == {"count": 125.0, "code_reasoning": 100.0}
    assert r["metrics"]["perception"] == 125.0
    assert r["metrics"]["cognition"] == 100.0
    assert r["metrics"]["total"] == 225.0
    assert not r["notes"]


@pytest.mark.parametrize("answer,expected", [
    ("A", "A"), ("B.", "B"), ("(C)", "C"), ("The answer is B", "B"), ("I choose A", "A"),
    ("Answer: C.", "C"), ("A B", None), ("A cat sits on the mat", "C"),
    ("a dog and a cat", None), ("Nothing useful", None), ("D) sheep", "D"), ("E", "E"),
])
def test_mmbench_extraction(answer, expected):
    options = {"A": "dog", "B": "bird", "C": "cat", "D": "sheep"}
    assert mmbench.extract_option(answer, options) == expected


def test_mmbench_circular_eval():
    def row(index, answer, cat="c1", l2="L"):
        return {"index": index, "answer": answer, "category": cat, "L2-category": l2,
                "A": "dog", "B": "cat", "C": "bird", "D": None}
    docs = [row(1, "A"), row(1_000_001, "B"), row(2_000_001, "C"),       # q1: all right
            row(2, "A", "c2"), row(1_000_002, "B", "c2"),                 # q2: one wrong
            row(3, "B", "c2"), row(1_000_003, "C", "c2")]                 # q3: unresolved
    preds = ["A", "B.", "(C)", "A", "A", "B", "I am not sure"]
    r = mmbench.score_mmbench(docs, preds)
    assert r["metrics"]["circular_accuracy"] == pytest.approx(100 / 3)
    assert r["breakdowns"]["category"] == {"c1": 100.0, "c2": 0.0}
    assert r["breakdowns"]["l2_category"] == {"L": pytest.approx(100 / 3)}
    assert r["metrics"]["unresolved_answers"] == 1.0
    assert r["metrics"]["single_pass_accuracy"] == pytest.approx(500 / 7)
    assert r["extracted"][-1] is None


def test_anls():
    assert anls_mod.anls("Hello World", ["hello  world"]) == 1.0
    # distance 1 over max length 5 -> 0.8
    assert anls_mod.anls("helo", ["hello"]) == pytest.approx(0.8)
    assert anls_mod.anls("abc", ["xyz"]) == 0.0
    # best reference wins; below threshold -> 0
    assert anls_mod.anls("abcd", ["abzz", "wxyz"]) == pytest.approx(0.5)
    assert anls_mod.anls("abcde", ["abxyz"]) == 0.0
    assert anls_mod.levenshtein("kitten", "sitting") == 3


def test_relaxed_accuracy():
    assert relaxed.relaxed_correct("10.4", "10")
    assert not relaxed.relaxed_correct("10.6", "10")
    assert relaxed.relaxed_correct("12%", "0.12")
    assert relaxed.relaxed_correct("Yes", "yes")
    assert not relaxed.relaxed_correct("0.01", "0")          # zero target: string match
    assert relaxed.relaxed_correct("0", "0")
    r = relaxed.score_chartqa([{"answer": "5", "type": "human_test"},
                               {"answer": "a", "type": "augmented_test"}], ["5.2", "b"])
    assert r["metrics"]["relaxed_overall"] == 50.0
    assert r["metrics"]["relaxed_human_split"] == 100.0
    assert r["metrics"]["relaxed_augmented_split"] == 0.0


def test_ocrbench():
    assert ocrbench.ocrbench_correct("The text says HELLO", ["hello"], "IIIT5K")
    assert ocrbench.ocrbench_correct("ＡＢＣ", ["abc"], "IIIT5K")       # full-width folding
    assert ocrbench.ocrbench_correct("x ^ 2", ["x^2"], "HME100k")
    assert not ocrbench.ocrbench_correct("X^2", ["x^2"], "HME100k")   # case kept for HME
    docs = [{"answer": ["a"], "dataset": "d", "question_type": "Doc-oriented VQA"},
            {"answer": ["b"], "dataset": "d", "question_type": "Regular Text Recognition"}]
    r = ocrbench.score_ocrbench(docs, ["a", "c"])
    assert r["metrics"]["final_score"] == 1.0 and r["metrics"]["accuracy"] == 0.1
    assert r["metrics"]["text_recognition"] == 0.0


def test_pope():
    docs = [{"answer": a, "category": "adversarial"} for a in ["yes", "yes", "no", "no"]]
    r = pope.score_pope(docs, ["Yes", "no", "yes", "No"])
    m = r["metrics"]
    assert m["accuracy"] == 50.0 and m["precision"] == 50.0 and m["recall"] == 50.0
    assert m["f1"] == 50.0 and m["yes_ratio"] == 50.0
    # "Yes." is not an exact "yes" under lmms-eval's POPE rule
    assert pope.score_pope(docs[:1], ["Yes."])["metrics"]["accuracy"] == 0.0


def test_exact_families():
    assert exact.score_gqa([{"answer": "left"}], ["Left."])["metrics"]["accuracy"] == 100.0
    d = {"options": ["x", "y", "z"], "answer": "1"}
    assert exact.score_ai2d([d] * 4, ["B", "B. y", "(B)", "y"])["per_sample"] == [
        100.0, 100.0, 100.0, 0.0]
    s = {"choices": ["x", "y"], "answer": 0}
    assert exact.score_scienceqa([s] * 4, ["A", "a", "A. x", "(A)"])["per_sample"] == [
        100.0, 100.0, 100.0, 0.0]


def test_mmmu_parsing():
    opts = ["red", "green", "blue", "black"]
    assert mmmu.parse_multi_choice("B", opts) == "B"
    assert mmmu.parse_multi_choice("(C) blue", opts) == "C"
    assert mmmu.parse_multi_choice("A. red", opts) == "A"
    assert mmmu.parse_multi_choice("It is between A and then finally D", opts) == "D"
    assert mmmu.parse_multi_choice("I think the colour is clearly green here", opts) == "B"
    assert mmmu.parse_multi_choice("no idea", opts) is None
    assert 1234.5 in mmmu.parse_open("The answer is 1,234.5")
    assert mmmu.eval_open("1234.5", mmmu.parse_open("so the result is 1,234.5"))
    assert mmmu.eval_open("Paris", mmmu.parse_open("Therefore the capital is Paris."))
    assert not mmmu.eval_open("a", mmmu.parse_open("banana"))   # single letters need spaces
    assert mmmu.subject_of("validation_Art_Theory_12") == "Art_Theory"
    docs = [{"id": "validation_Math_1", "question_type": "multiple-choice",
             "options": str(opts), "answer": "B"},
            {"id": "validation_Art_2", "question_type": "open", "options": "[]", "answer": "4"},
            {"id": "validation_Math_3", "question_type": "multiple-choice",
             "options": str(opts), "answer": "A"}]
    r = mmmu.score_mmmu(docs, ["B", "x = 4", "??"])
    assert r["per_sample"] == [100.0, 100.0, 0.0]
    assert r["metrics"]["unresolved_multiple_choice"] == 1.0
    assert r["breakdowns"]["discipline"] == {"Art and Design": 100.0, "Science": 50.0}
