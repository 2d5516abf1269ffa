"""COCO caption wrapper vs. calling pycocoevalcap's tokenizer and scorers directly."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("pycocoevalcap")
pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="needs java")

REFS = {
    139: ["A woman stands in the dining area at the table.",
          "A room with chairs, a table, and a woman in it.",
          "A woman standing in a kitchen by a window.",
          "A person standing at a table in a room.",
          "A living area with a television and a table."],
    285: ["A big burly grizzly bear is shown with grass in the background.",
          "The large brown bear has a black nose.",
          "Closeup of a brown bear sitting in a grassy area.",
          "A large bear that is sitting on grass.",
          "A close up picture of a brown bear's face."],
    632: ["Bedroom scene with a bookcase, blue comforter and window.",
          "A bedroom with a bookshelf full of books.",
          "This room has a bed with blue sheets and a large bookcase",
          "A bed and a mirror in a small room.",
          "a bed room with a neatly made bed a window and a book shelf"],
    724: ["A stop sign is mounted upside-down on it's post.",
          "A stop sign that is hanging upside down.",
          "An upside down stop sign by the road.",
          "a stop sign put upside down on a metal pole",
          "A stop sign installed upside down on a metal pole."],
}
PREDS = {139: "A woman standing in a kitchen next to a table.",
         285: "A brown bear sitting in the grass.",
         632: "A bedroom with a bed and a bookshelf.",
         724: "An upside-down stop sign on a pole, near a street."}


def _docs():
    docs, preds = [], []
    for iid, caps in REFS.items():
        docs.append({"question_id": f"{iid:012d}.jpg", "answer": caps, "id": iid})
        preds.append(PREDS[iid])
    return docs, preds


def _direct():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = {k: [{"caption": c} for c in v] for k, v in REFS.items()}
    res = {k: [{"caption": PREDS[k]}] for k in REFS}
    tok = PTBTokenizer()
    gts, res = tok.tokenize(gts), tok.tokenize(res)
    out = {}
    b, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"Bleu_{i + 1}": b[i] for i in range(4)})
    out["METEOR"], _ = Meteor().compute_score(gts, res)
    out["ROUGE_L"], _ = Rouge().compute_score(gts, res)
    out["CIDEr"], _ = Cider().compute_score(gts, res)
    return out


@pytest.fixture(scope="module")
def ours():
    """The wrapper's scores of the clean captions (one Java round-trip shared by two tests)."""
    from llava_ov15.eval.scoring.coco import score_coco

    return score_coco(*_docs())


def test_coco_wrapper_identical_to_pycocoevalcap(ours):
    from llava_ov15.eval.scoring.coco import METRICS, coco_results_file

    docs, preds = _docs()
    ref = _direct()
    for k in METRICS:
        assert ours["metrics"][k] == ref[k], k          # identical, not approximately
        assert ours["metrics"][f"{k}_x100"] == pytest.approx(ref[k] * 100)
    assert 0 < ours["metrics"]["CIDEr"] < 10 and 0 < ours["metrics"]["Bleu_1"] <= 1
    assert len(ours["per_sample"]) == len(docs)
    assert coco_results_file(docs, preds)[0] == {"image_id": 139, "caption": PREDS[139]}


def test_caption_with_newline_or_control_chars_scores_like_with_a_space(ours):
    from llava_ov15.eval.scoring.coco import score_coco

    docs, preds = _docs()
    broken = list(preds)
    # "\n" is patched by pycocoevalcap itself; "\r" and U+2028 split the PTB tokenizer's line
    # and shifted later captions onto the wrong image before sanitising.
    broken[0] = preds[0].replace(" standing ", "\nstanding\r\n")
    broken[1] = preds[1].replace(" sitting ", "\r sitting\u2028")
    broken[2] = preds[2].replace(" with ", "\x00with\t\x1b")
    assert score_coco(docs, broken)["metrics"] == ours["metrics"]
