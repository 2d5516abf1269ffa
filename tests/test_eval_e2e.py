"""End to end: synthetic files in every supported layout -> CLI -> results.json + report.html;
resume after a crash / Ctrl-C, --limit, --rescore, and clear data errors."""

from __future__ import annotations

import json
import re
import shutil
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
    cli("--model", "dummy:hash", "--benchmarks", "all", "--data-dir", str(data),
        "--output", str(out), "--note", "Demo model: scores near 0 are expected.")
    return out


def test_benchmarks_all_runs_every_supported_benchmark(full_run):
    res = json.loads((full_run / "results.json").read_text())
    assert res["config"]["benchmarks"] == ALL
    assert sorted(res["benchmarks"]) == ALL


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


def _pngs(html: str) -> list:
    import base64
    import io

    from PIL import Image

    return [Image.open(io.BytesIO(base64.b64decode(b)))
            for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)]


def test_report_charts_fit_the_page_width(full_run):
    from llava_ov15.eval.report import PAGE_WIDTH_PX

    html = (full_run / "report.html").read_text()
    assert f"max-width:{PAGE_WIDTH_PX}px" in html and "img{max-width:100%" in html
    widths = [im.size[0] for im in _pngs(html)]
    assert len(widths) >= 5 and max(widths) <= PAGE_WIDTH_PX
    assert widths[0] >= 0.8 * PAGE_WIDTH_PX      # the headline chart uses the width it has


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (headless)")
def test_report_has_no_horizontal_scroll_in_a_browser(full_run, tmp_path):
    """Rendered by headless Chromium in a 1024 px window, the page is no wider than the window."""
    html = (full_run / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", "<script>var d=document.documentElement;"
                                  "document.body.setAttribute('data-w', d.scrollWidth + '/' + "
                                  "d.clientWidth)</script></body>"))
    p = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                        "--window-size=1024,800", "--dump-dom", probe.as_uri()],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r'data-w="(\d+)/(\d+)"', p.stdout)
    assert m, p.stderr[-2000:]
    assert int(m.group(1)) <= int(m.group(2))


def test_headline_chart_includes_mme_and_coco_on_their_own_axes(full_run):
    from llava_ov15.eval.report import summary_figure

    res = json.loads((full_run / "results.json").read_text())
    fig = summary_figure(res["benchmarks"], {n: get(n) for n in ALL})
    panels = {t.get_text(): ax for ax in fig.axes for t in ax.get_xticklabels()}
    scored = [n for n in ALL if get(n).score is not None]
    assert sorted(panels) == scored                  # every scored benchmark, MME and COCO too
    assert panels["mme"] is not panels["coco2017_cap_val"] is not panels["pope"]
    assert panels["mme"].get_ylim()[1] >= 2800 and panels["pope"].get_ylim()[1] <= 105
    assert "not normalised" in fig._suptitle.get_text()
    assert "own axis" in panels["mme"].get_title()
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_report_says_in_words_when_published_figures_are_absent(full_run):
    html = (full_run / "report.html").read_text()
    summary = html[html.index("<h2>Summary</h2>"):html.index("</table>")]
    assert "<td>-</td>" not in summary
    rows = re.findall(r"<tr><td>(.*?)</tr>", summary)
    assert len(rows) == len(ALL)
    for row in rows:
        assert ("no published figure" in row) != bool(re.search(r"<td>\d+\.\d\*?</td>", row))
    mme = next(r for r in rows if r.startswith("MME<"))
    assert "has no public source" in mme
    assert "no answers in this split" in summary           # test splits: submission only


def test_report_shows_the_note(full_run):
    html = (full_run / "report.html").read_text()
    assert "<div class='callout'><b>Note:</b> Demo model: scores near 0 are expected." in html
    res = json.loads((full_run / "results.json").read_text())
    assert res["notes"] == ["Demo model: scores near 0 are expected."]


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
