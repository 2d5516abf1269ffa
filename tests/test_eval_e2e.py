"""End to end: synthetic files in every supported layout -> CLI -> results.json + report.html;
resume after a crash / Ctrl-C, --limit, --rescore, and clear data errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llava_ov15.eval.benchmarks import REGISTRY, get
from llava_ov15.eval.runner import ResumeError, read_predictions, run_benchmark
from llava_ov15.eval.testing import DummyPredictor, write_synthetic_benchmarks

ALL = sorted(REGISTRY)
NO_COCO = [b for b in ALL if b != "coco2017_cap_val"]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "llava_ov15.eval", "--no-progress", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    write_synthetic_benchmarks(root, n=8)
    return root


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out")
    cli("--model", "dummy:hash", "--benchmarks", ",".join(ALL), "--data-dir", str(data),
        "--output", str(out))
    return out


def _saved(out: Path, name: str) -> list[str]:
    recs = read_predictions(out / "predictions" / f"{name}.jsonl", repair=False)
    return [recs[i]["prediction"] for i in sorted(recs)]


def test_results_complete_and_equal_to_scorers(full_run, data):
    res = json.loads((full_run / "results.json").read_text())
    assert set(res) >= {"config", "model", "versions", "benchmarks", "created"}
    assert res["model"]["predictor"]["test_only"] is True
    assert res["versions"]["pycocoevalcap"] and res["versions"]["java"]
    assert set(res["benchmarks"]) == set(ALL)
    for name in ALL:
        e = res["benchmarks"][name]
        b = get(name)
        table = b.load(data)
        assert e["n_samples"] == e["n_total"] == len(table) and e["complete"]
        preds = _saved(full_run, name)
        assert len(preds) == len(table)
        if b.score is None:
            assert e["headline"] is None and (full_run / e["submission"]).is_file()
            continue
        if name == "coco2017_cap_val":
            continue  # checked below without another Java round-trip per metric
        expect = json.loads(json.dumps(b.score(table.docs, preds)))
        assert e["metrics"] == expect["metrics"], name
        assert e["breakdowns"] == expect["breakdowns"], name
        assert e["headline"]["value"] == expect["metrics"][b.headline]
    coco = res["benchmarks"]["coco2017_cap_val"]
    assert set(coco["metrics"]) >= {"Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}
    assert res["benchmarks"]["mmmu_val"]["published"]["match"] == "exact"
    assert res["benchmarks"]["mme"]["breakdowns"]["category"]


def test_report_html(full_run):
    html = (full_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5       # summary + per-category charts
    assert "data:image/jpeg;base64," in html               # sample images
    for name in ALL:
        assert get(name).title.replace("&", "&amp;") in html
    assert "LLaVA-OV-1.5-8B" in html and "Qwen2.5-VL-7B" in html


def test_resume_after_crash_and_ctrl_c(data, tmp_path):
    b = get("mmbench_en_dev")
    table = b.load(data)
    ref = DummyPredictor("hash")
    r0 = run_benchmark(b, table, tmp_path / "a", predictor=ref, model_id="m", progress=False)
    assert ref.calls == len(table)

    class Interrupting(DummyPredictor):
        def predict(self, *a, **k):
            if self.calls == 5:
                raise KeyboardInterrupt
            return super().predict(*a, **k)

    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(b, table, out, predictor=Interrupting("hash"), model_id="m",
                      progress=False)
    path = out / "predictions" / f"{b.name}.jsonl"
    assert len(path.read_text().splitlines()) == 5
    with path.open("ab") as f:                     # a torn record, as after a hard crash
        f.write(b'{"doc_id": 5, "key": "x", "predic')
    again = DummyPredictor("hash")
    r1 = run_benchmark(b, table, out, predictor=again, model_id="m", progress=False)
    assert again.calls == len(table) - 5
    assert r1["metrics"] == r0["metrics"]
    assert path.read_bytes() == (tmp_path / "a" / "predictions" / path.name).read_bytes()
    done = DummyPredictor("hash")
    run_benchmark(b, table, out, predictor=done, model_id="m", progress=False)
    assert done.calls == 0
    with pytest.raises(ResumeError, match="different settings"):
        run_benchmark(b, table, out, predictor=done, model_id="other", progress=False)


def test_limit_then_finish_then_rescore(data, tmp_path):
    names = "mme,vqav2_val,mmmu_val,gqa"
    cli("--model", "dummy:hash", "--benchmarks", names, "--data-dir", str(data),
        "--output", str(tmp_path), "--limit", "3")
    res = json.loads((tmp_path / "results.json").read_text())
    assert all(e["n_samples"] == 3 and not e["complete"] for e in res["benchmarks"].values())
    assert any("partial" in n for n in res["benchmarks"]["mme"]["notes"])
    cli("--model", "dummy:hash", "--benchmarks", names, "--data-dir", str(data),
        "--output", str(tmp_path))
    res = json.loads((tmp_path / "results.json").read_text())
    assert all(e["complete"] for e in res["benchmarks"].values())

    # Edit saved predictions, then --rescore (no model) must score the edited file.
    path = tmp_path / "predictions" / "vqav2_val.jsonl"
    table = get("vqav2_val").load(data)
    lines = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        rec["prediction"] = table.docs[rec["doc_id"]]["multiple_choice_answer"]
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    cli("--rescore", "--benchmarks", "vqav2_val", "--data-dir", str(data),
        "--output", str(tmp_path))
    res = json.loads((tmp_path / "results.json").read_text())
    e = res["benchmarks"]["vqav2_val"]
    expect = get("vqav2_val").score(table.docs, _saved(tmp_path, "vqav2_val"))
    assert e["metrics"]["accuracy"] == pytest.approx(expect["metrics"]["accuracy"])
    assert e["metrics"]["accuracy"] == pytest.approx(100.0)     # 7 of 10 humans agree
    assert res["model"]["spec"] == "dummy:hash"


def test_data_errors_name_the_file(data, tmp_path):
    p = cli("--model", "dummy:echo", "--benchmarks", "pope", "--data-dir",
            str(tmp_path / "nowhere"), "--output", str(tmp_path / "o"), check=False)
    assert p.returncode == 2 and "POPE/data/test-*.parquet" in p.stderr

    bad = tmp_path / "bad"
    (bad / "POPE/data").mkdir(parents=True)
    (bad / "POPE/data/test-00000-of-00001.parquet").write_bytes(b"not parquet at all")
    p = cli("--model", "dummy:echo", "--benchmarks", "pope", "--data-dir", str(bad),
            "--output", str(tmp_path / "o"), check=False)
    assert p.returncode == 2 and "test-00000-of-00001.parquet" in p.stderr
    assert "not a readable parquet" in p.stderr

    import pyarrow as pa
    import pyarrow.parquet as pq

    wrong = tmp_path / "wrong"
    (wrong / "ChartQA/data").mkdir(parents=True)
    pq.write_table(pa.table({"question": ["q"], "label": ["a"]}),
                   wrong / "ChartQA/data/test-00000-of-00001.parquet")
    p = cli("--model", "dummy:echo", "--benchmarks", "chartqa", "--data-dir", str(wrong),
            "--output", str(tmp_path / "o"), check=False)
    assert p.returncode == 2 and "missing column(s) ['answer', 'type', 'image']" in p.stderr

    p = cli("--model", "dummy:echo", "--benchmarks", "nope", "--data-dir", str(data),
            "--output", str(tmp_path / "o"), check=False)
    assert p.returncode == 2 and "unknown benchmark" in p.stderr


def test_prompts_follow_lmms_eval(data):
    t = get("mmbench_en_dev").load(data)
    p = get("mmbench_en_dev").build_prompt(t.docs[0])
    assert p.text == ("Hint 0. Question 0? There are several options:\nA. option 0-0\n"
                      "B. option 0-1\nC. option 0-2\n\n"
                      "Answer with the option's letter from the given choices directly.")
    mme = get("mme").build_prompt({"question": "Is it red? Please answer yes or no."})
    assert mme.text == "Is it red?\nAnswer the question using a single word or phrase."
    m = get("mmmu_val").build_prompt({"question": "See <image 1> and <image 2>.",
                                      "question_type": "open", "options": "[]"})
    assert m.images == ("image_1", "image_2")
    assert m.content == ("See", 0, "and", 1,
                         ".\n\nAnswer the question using a single word or phrase.")
    s = get("scienceqa_img").build_prompt({"hint": "Look.", "question": "Q?",
                                           "choices": ["x", "y"]})
    assert s.text == ("Context: Look.\nQ?\nA. x\nB. y\n"
                      "Answer with the option's letter from the given choices directly.")
    tv = get("textvqa_val").build_prompt({"question": "what brand IS it?"})
    assert tv.text.startswith("What brand is it?\n")


def test_undecodable_image_names_file_row_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llava_ov15.eval.data import DataError

    d = tmp_path / "POPE/data"
    d.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"question_id": "1", "question": "q", "answer": "yes",
                                          "image": {"bytes": b"garbage", "path": "x.png"}}]),
                   d / "test-00000-of-00001.parquet")
    table = get("pope").load(tmp_path)
    with pytest.raises(DataError, match=r"test-00000-of-00001.parquet row 0 column 'image'"):
        run_benchmark(get("pope"), table, tmp_path / "o", predictor=DummyPredictor("yes"),
                      model_id="m", progress=False)
