"""The real model through the eval CLI: a tiny random-weight checkpoint saved in the HF layout
-> `python -m llava_ov15.eval --model DIR` -> predictions, results.json, report.html."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from llava_ov15.eval.benchmarks import get
from llava_ov15.eval.model_adapter import EVAL_MAX_PIXELS, EVAL_MIN_PIXELS, build_messages
from llava_ov15.eval.runner import load_images, postprocess, read_predictions
from llava_ov15.eval.testing import write_synthetic_benchmarks
from llava_ov15.model import load_pipeline
from llava_ov15.model.testing import save_tiny_checkpoint

# yes/no, interleaved multi-image (MMMU), VQA, captions (Java scorer). Not MMBench: its 1024-token
# limit is reached by a random model that never says <|im_end|> (tens of seconds on CPU).
BENCHES = ["mme", "mmmu_val", "vqav2_val", "coco2017_cap_val"]
LIMIT = 3


def cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "llava_ov15.eval", "--no-progress", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{cmd} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
# Words the tiny tokenizer knows, so that some answers hit the scorers' vocabularies.
WORDS = ["Yes", "No", "yes", "no", "A", "B", "C", "D", "a", "cat", "red", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("model_eval")
    data = root / "data"
    write_synthetic_benchmarks(data, n=4)
    ckpt = save_tiny_checkpoint(root / "ckpt", words=WORDS)
    out = root / "out"
    cli("--model", str(ckpt), "--benchmarks", ",".join(BENCHES), "--data-dir", str(data),
        "--output", str(out), "--limit", str(LIMIT), "--device", "cpu")
    return data, ckpt, out


def test_results_and_report_from_real_model(run):
    data, ckpt, out = run
    res = json.loads((out / "results.json").read_text())
    m = res["model"]
    assert m["spec"] == str(ckpt.resolve()) and m["files"] == 3 and len(m["fingerprint"]) == 16
    assert m["predictor"] == {"class": "ModelPredictor", "path": str(ckpt),
                              "min_pixels": EVAL_MIN_PIXELS, "max_pixels": EVAL_MAX_PIXELS,
                              "device": "cpu", "dtype": "float32"}
    assert set(res["benchmarks"]) == set(BENCHES)
    any_text = False
    for name in BENCHES:
        e, b = res["benchmarks"][name], get(name)
        table = b.load(data)
        assert e["n_samples"] == LIMIT and e["n_total"] == len(table) and not e["complete"]
        recs = read_predictions(out / "predictions" / f"{name}.jsonl", repair=False)
        assert sorted(recs) == list(range(LIMIT))
        preds = [recs[i]["prediction"] for i in range(LIMIT)]
        assert all(recs[i]["prediction"] == postprocess(recs[i]["raw"], b.until)
                   for i in range(LIMIT))
        any_text |= any(p.strip() for p in preds)
        if name == "coco2017_cap_val":
            assert set(e["metrics"]) >= {"Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}
            continue
        expect = json.loads(json.dumps(b.score(table.docs[:LIMIT], preds)))
        assert e["metrics"] == expect["metrics"], name
        assert e["breakdowns"] == expect["breakdowns"], name
        assert e["headline"]["value"] == expect["metrics"][b.headline]
    assert any_text  # the random model does say something
    html = (out / "report.html").read_text()
    for name in BENCHES:
        assert get(name).title.replace("&", "&amp;") in html
    assert "data:image/jpeg;base64," in html and str(ckpt.resolve()) in html


@pytest.mark.parametrize(("name", "doc"), [("mme", 0), ("mmmu_val", 1)])
def test_saved_answer_is_the_pipeline_answer(run, name, doc):
    """The CLI's saved raw answer equals a direct in-process call with lmms-eval's messages
    (images first, or interleaved for MMMU; eval pixel bounds): the adapter adds nothing."""
    data, ckpt, out = run
    b = get(name)
    table = b.load(data)
    prompt = b.build_prompt(table.docs[doc])
    images, content = load_images(table, doc, prompt.images, prompt.content)
    assert images and all(isinstance(im, Image.Image) for im in images)
    messages = build_messages(images, prompt.text, content)
    if name == "mmmu_val":  # "<image 1> What ... Compare <image 2>." interleaved
        assert [p["type"] for p in messages[0]["content"]] == ["image", "text"] * 2
    pipe = load_pipeline(ckpt, device="cpu", min_pixels=EVAL_MIN_PIXELS,
                         max_pixels=EVAL_MAX_PIXELS)
    raw = pipe.generate(messages, max_new_tokens=b.max_new_tokens)
    rec = read_predictions(out / "predictions" / f"{b.name}.jsonl", repair=False)[doc]
    assert rec["raw"] == raw and rec["prompt"] == prompt.text


def test_resume_with_model_only_runs_missing_docs(run, capsys):
    from llava_ov15.eval.__main__ import main  # in-process: no second interpreter start

    data, ckpt, out = run
    path = out / "predictions" / "vqav2_val.jsonl"
    before = path.read_text().splitlines()
    args = ["--no-progress", "--model", str(ckpt), "--benchmarks", "vqav2_val", "--data-dir",
            str(data), "--output", str(out), "--device", "cpu"]
    assert main([*args, "--limit", str(LIMIT + 1)]) == 0
    after = path.read_text().splitlines()
    assert after[:LIMIT] == before and len(after) == LIMIT + 1
    # A different checkpoint (other weights -> other fingerprint) must not extend this file.
    other = save_tiny_checkpoint(out.parent / "other", seed=4, words=WORDS)
    assert main([*args, "--model", str(other)]) == 2
    assert "different settings" in capsys.readouterr().err
