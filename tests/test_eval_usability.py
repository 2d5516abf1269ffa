"""Eval CLI usability: --benchmarks all, --max-new-tokens, notes, clear --rescore errors and
results.json merging (issue 13, "Eval usability")."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from llava_ov15.eval.__main__ import parse_benchmarks
from llava_ov15.eval.benchmarks import REGISTRY
from llava_ov15.eval.provenance import auto_notes, model_fingerprint
from llava_ov15.eval.testing import write_synthetic_benchmarks


def cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "llava_ov15.eval", "--no-progress", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def ok(*args: str) -> subprocess.CompletedProcess:
    p = cli(*args)
    assert p.returncode == 0, f"{args}\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    write_synthetic_benchmarks(root, n=6)
    return root


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_benchmarks_all_expands_to_every_supported_benchmark():
    assert parse_benchmarks("all") == sorted(REGISTRY)
    assert parse_benchmarks("pope, all")[0] == "pope"
    assert sorted(parse_benchmarks("pope,all,mme")) == sorted(REGISTRY)    # no duplicates
    with pytest.raises(KeyError, match="unknown benchmark 'nope'"):
        parse_benchmarks("all,nope")
    with pytest.raises(KeyError, match="no benchmark named"):
        parse_benchmarks(" , ")


def test_missing_data_for_several_benchmarks_is_reported_at_once(tmp_path):
    p = cli("--model", "dummy:yes", "--benchmarks", "all", "--data-dir", str(tmp_path / "none"),
            "--output", str(tmp_path / "o"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.count("error: ") == len(REGISTRY)
    assert "MME/data/test-*.parquet" in p.stderr and "POPE/data/test-*.parquet" in p.stderr


def test_max_new_tokens_override_applies_to_every_benchmark_and_is_recorded(data, tmp_path):
    names = "mme,mmbench_en_dev,pope"
    ok("--model", "dummy:echo", "--benchmarks", names, "--data-dir", str(data),
       "--output", str(tmp_path), "--limit", "3", "--max-new-tokens", "2")
    res = results(tmp_path)
    assert res["config"]["max_new_tokens"] == 2
    for name in names.split(","):
        e = res["benchmarks"][name]
        assert e["max_new_tokens"] == 2
        assert e["max_new_tokens_default"] == REGISTRY[name].max_new_tokens
        assert any("max_new_tokens 2 (task default" in n for n in e["notes"])
        meta = json.loads((tmp_path / "predictions" / f"{name}.meta.json").read_text())
        assert meta["max_new_tokens"] == 2
        for line in (tmp_path / "predictions" / f"{name}.jsonl").read_text().splitlines():
            assert len(json.loads(line)["raw"].split()) <= 2    # echo cuts at the limit
    assert "2 new tokens for every benchmark" in (tmp_path / "report.html").read_text()
    # resuming with the task defaults would mix two limits in one file: refused
    p = cli("--model", "dummy:echo", "--benchmarks", "pope", "--data-dir", str(data),
            "--output", str(tmp_path))
    assert p.returncode == 2 and "different settings" in p.stderr and "max_new_tokens" in p.stderr
    p = cli("--rescore", "--benchmarks", "pope", "--data-dir", str(data), "--output",
            str(tmp_path), "--max-new-tokens", "5")
    assert p.returncode == 2 and "no effect with --rescore" in p.stderr
    ok("--rescore", "--benchmarks", "pope", "--data-dir", str(data), "--output", str(tmp_path))
    assert results(tmp_path)["benchmarks"]["pope"]["max_new_tokens"] == 2   # from the meta


def _predict(data: Path, out: Path, names: str = "pope") -> None:
    ok("--model", "dummy:hash", "--benchmarks", names, "--data-dir", str(data),
       "--output", str(out))


def test_rescore_against_fewer_data_rows_names_file_and_line(data, tmp_path):
    _predict(data, tmp_path / "out")
    small = tmp_path / "small"
    write_synthetic_benchmarks(small, n=3)
    p = cli("--rescore", "--benchmarks", "pope", "--data-dir", str(small), "--output",
            str(tmp_path / "out"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "pope.jsonl line 4: doc_id 3 is beyond the 3 rows" in p.stderr
    assert "check --data-dir" in p.stderr


def test_rescore_against_other_rows_names_file_and_line(data, tmp_path):
    _predict(data, tmp_path / "out")
    path = tmp_path / "out" / "predictions" / "pope.jsonl"
    lines = path.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["key"] = "someone else's question"
    lines[1] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")
    p = cli("--rescore", "--benchmarks", "pope", "--data-dir", str(data), "--output",
            str(tmp_path / "out"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "pope.jsonl line 2: doc_id 1 was saved for key" in p.stderr


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("prediction"), "line 3: record for doc_id 2 has no 'prediction' field"),
    (lambda r: r.update(prediction=7), "line 3: 'prediction' of doc_id 2 must be a string"),
    (lambda r: r.pop("doc_id"), "line 3: record has no valid 'doc_id'"),
])
def test_rescore_of_a_bad_saved_record_names_file_and_line(data, tmp_path, edit, message):
    _predict(data, tmp_path / "out")
    path = tmp_path / "out" / "predictions" / "pope.jsonl"
    lines = path.read_text().splitlines()
    rec = json.loads(lines[2])
    edit(rec)
    lines[2] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")
    p = cli("--rescore", "--benchmarks", "pope", "--data-dir", str(data), "--output",
            str(tmp_path / "out"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"error: {path}" in p.stderr and message in p.stderr


def test_rescoring_one_benchmark_keeps_the_others_in_results_json(data, tmp_path):
    out = tmp_path / "out"
    ok("--model", "dummy:hash", "--benchmarks", "mme,pope,gqa", "--data-dir", str(data),
       "--output", str(out), "--note", "first run")
    before = results(out)
    p = ok("--rescore", "--benchmarks", "pope", "--data-dir", str(data), "--output", str(out))
    after = results(out)
    assert list(after["benchmarks"]) == ["mme", "pope", "gqa"]
    assert after["benchmarks"]["mme"] == before["benchmarks"]["mme"]
    assert after["benchmarks"]["gqa"] == before["benchmarks"]["gqa"]
    assert after["benchmarks"]["pope"]["scored"]["rescore"] is True
    assert after["config"]["kept_from_previous"] == ["mme", "gqa"]
    assert after["model"] == before["model"] and after["notes"] == ["first run"]
    assert "kept from an earlier run" in p.stdout
    html = (out / "report.html").read_text()
    assert "id='mme'" in html and "id='gqa'" in html and "Sample predictions not shown" not in html

    # results of another model are not mixed in: replaced, with a warning
    p = ok("--model", "dummy:yes", "--benchmarks", "pope", "--data-dir", str(data),
           "--output", str(tmp_path / "out"), "--overwrite")
    assert "held results of another model" in p.stderr
    assert list(results(out)["benchmarks"]) == ["pope"]


def _fake_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    """A file whose header claims these tensors (count_parameters reads only the header)."""
    header = {k: {"dtype": "F32", "shape": s, "data_offsets": [0, 0]} for k, s in shapes.items()}
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def test_tiny_model_gets_a_note_that_scores_near_zero_are_expected(tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    _fake_safetensors(tiny / "model.safetensors", {"a": [1000, 64], "b": [64]})
    m = model_fingerprint(str(tiny))
    assert m["parameters"] == 64_064
    (note,) = auto_notes(m)
    assert "0.1 M parameters" in note and "near zero are expected" in note

    big = tmp_path / "big"
    big.mkdir()
    _fake_safetensors(big / "model-00001-of-00002.safetensors", {"a": [151936, 4096]})
    _fake_safetensors(big / "model-00002-of-00002.safetensors", {"b": [4096, 4096]})
    m = model_fingerprint(str(big))
    assert m["parameters"] == 151936 * 4096 + 4096 * 4096 and auto_notes(m) == []
    assert auto_notes(model_fingerprint("dummy:hash")) == []
