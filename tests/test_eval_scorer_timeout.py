"""The external COCO scorers run in a child process with a time limit: a hung Java tokenizer or
METEOR ends in a clear error (exit 2 from the CLI), never in a run that waits forever."""

from __future__ import annotations

import sys
import time

import pytest

from llava_ov15.eval.__main__ import main
from llava_ov15.eval.scoring import coco
from llava_ov15.eval.scoring.coco import CocoScoringError, compute_coco_metrics, sanitize_caption
from llava_ov15.eval.testing import write_synthetic_benchmarks

HANG = [sys.executable, "-c", "import time; time.sleep(120)"]
GTS = {1: [{"caption": "a dog on a bench"}]}
RES = {1: [{"caption": "a dog"}]}


def test_hung_coco_scorer_times_out_with_a_clear_error():
    t0 = time.monotonic()
    with pytest.raises(CocoScoringError, match=r"did not finish within 1 s.*--scorer-timeout"):
        compute_coco_metrics(GTS, RES, timeout_s=1, command=HANG)
    assert time.monotonic() - t0 < 20


def test_failing_coco_scorer_reports_its_last_stderr_lines():
    crash = [sys.executable, "-c", "import sys; sys.stderr.write('boom: no jar\\n'); sys.exit(3)"]
    with pytest.raises(CocoScoringError, match=r"failed \(exit 3\): boom: no jar"):
        compute_coco_metrics(GTS, RES, timeout_s=30, command=crash)


def test_captions_are_sent_as_one_line_each():
    assert sanitize_caption("a\nb\r\nc\u2028d\x00e\tf\x85g") == "a b c d e f g"
    assert sanitize_caption("plain, text. ok") == "plain, text. ok"


def test_cli_scorer_timeout_exits_2_without_traceback(tmp_path, monkeypatch, capsys):
    write_synthetic_benchmarks(tmp_path / "data", n=2)
    monkeypatch.setattr(coco, "_worker_command", lambda: HANG)
    t0 = time.monotonic()
    rc = main(["--model", "dummy:hash", "--benchmarks", "coco2017_cap_val", "--data-dir",
               str(tmp_path / "data"), "--output", str(tmp_path / "out"), "--no-progress",
               "--scorer-timeout", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and time.monotonic() - t0 < 30
    assert "error: COCO caption scoring" in err and "within 1 s" in err
    assert "Traceback" not in err
    # predictions are kept, so a rerun with a larger limit only rescores
    assert (tmp_path / "out/predictions/coco2017_cap_val.jsonl").read_text().count("\n") == 2
