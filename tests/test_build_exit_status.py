"""A build or pack that loses most of its input must not look like a success: it exits 1 after
writing everything, naming the top reject reasons with an example of each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import read_jsonl, run_cli, shard_files
from llava_ov15 import pack


def _corpus(tmp_path: Path, photo_jpeg: bytes, good: int, missing: int, invalid: int = 0) -> Path:
    lines = []
    for i in range(good):
        # Distinct bytes per image, so no good record is a duplicate.
        (tmp_path / f"g{i}.jpg").write_bytes(photo_jpeg[:-2] + bytes([i]) + photo_jpeg[-2:])
        lines.append(json.dumps({"id": f"g{i}", "image": f"g{i}.jpg", "caption": "a man"}))
    for i in range(missing):
        lines.append(json.dumps({"id": f"m{i}", "image": f"nope{i}.jpg", "caption": "lost"}))
    lines += ['{"id": "broken", "caption": '] * invalid
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    return corpus


def _build(corpus: Path, out: Path, *extra: str, check: bool = False):
    return run_cli("build", "--input", str(corpus), "--output", str(out), "--progress", "quiet",
                   "--phash", "off", *extra, check=check)


def test_build_rejecting_over_the_limit_exits_1_naming_reasons_with_examples(tmp_path,
                                                                             photo_jpeg):
    corpus = _corpus(tmp_path, photo_jpeg, good=4, missing=5, invalid=2)
    out = tmp_path / "out"
    p = _build(corpus, out)
    assert p.returncode == 1, p.stderr
    err = p.stderr
    assert "Traceback" not in err
    assert "rejected 7 of 11 records (63.6%, more than --max-reject-rate 0.5)" in err
    # Most frequent first, each with its first occurrence as file:line id reason.
    lines = err.splitlines()
    top = next(i for i, line in enumerate(lines) if "top reasons" in line)
    assert lines[top + 1].strip().startswith(
        f"missing_file: 5, e.g. {corpus}:5 id=m0 image 0 (nope0.jpg): file not found")
    assert lines[top + 2].strip().startswith(f"invalid_record: 2, e.g. {corpus}:10 ")
    assert "malformed JSON" in lines[top + 2]
    assert str(out) in err and "rejects.jsonl" in err
    # Everything was still written, and the summary printed.
    assert "samples 4, rejects 7" in p.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["samples"] == 4 and len(shard_files(out)) == 1
    assert len(read_jsonl(out / "rejects.jsonl")) == 7
    assert json.loads((out / "stats.json").read_text())["rejects"] == 7
    # A higher limit accepts the same corpus, as does a resume of it with the limit raised.
    assert _build(corpus, tmp_path / "ok", "--max-reject-rate", "0.7").returncode == 0
    p = _build(corpus, out, "--resume", "--max-reject-rate", "70%")
    assert p.returncode == 0, p.stderr


def test_build_under_the_limit_exits_0(tmp_path, photo_jpeg):
    corpus = _corpus(tmp_path, photo_jpeg, good=6, missing=4)
    p = _build(corpus, tmp_path / "out")
    assert p.returncode == 0, p.stderr
    p = _build(corpus, tmp_path / "strict", "--max-reject-rate", "0.2")
    assert p.returncode == 1 and "more than --max-reject-rate 0.2" in p.stderr


def test_build_writing_no_samples_exits_1_even_without_a_limit(tmp_path, photo_jpeg):
    corpus = _corpus(tmp_path, photo_jpeg, good=0, missing=3)
    p = _build(corpus, tmp_path / "out", "--max-reject-rate", "1")
    assert p.returncode == 1
    assert "build wrote no samples: all 3 records were rejected" in p.stderr
    assert "missing_file: 3, e.g." in p.stderr and "Traceback" not in p.stderr
    assert len(read_jsonl(tmp_path / "out" / "rejects.jsonl")) == 3


@pytest.mark.parametrize("text", ["", "\n \n\t\n"], ids=["empty", "blank-lines"])
def test_build_that_reads_no_record_is_an_error(tmp_path, text):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(text)
    p = _build(corpus, tmp_path / "out")
    assert p.returncode == 1
    assert "holds no records" in p.stderr and str(corpus) in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    with pytest.raises(pack.InputError, match="no records"):
        pack.build(corpus, tmp_path / "api", progress="quiet")


def test_python_api_raises_rejects_error_with_the_summary(tmp_path, photo_jpeg):
    corpus = _corpus(tmp_path, photo_jpeg, good=1, missing=3)
    with pytest.raises(pack.RejectsError, match="missing_file: 3") as e:
        pack.build(corpus, tmp_path / "out", progress="quiet")
    assert isinstance(e.value, pack.PackError)
    assert e.value.summary["samples"] == 1 and e.value.summary["rejects"] == 3
    s = pack.build(corpus, tmp_path / "none", progress="quiet", max_reject_rate=None)
    assert s["samples"] == 1
    with pytest.raises(ValueError, match="max_reject_rate"):
        pack.build(corpus, tmp_path / "bad", max_reject_rate=1.5)
    p = _build(corpus, tmp_path / "cli", "--max-reject-rate", "lots")
    assert p.returncode == 2 and "--max-reject-rate" in p.stderr
    assert not (tmp_path / "bad").exists() and not (tmp_path / "cli").exists()


def test_pack_rejecting_everything_exits_1_naming_reasons(tmp_path, photo_jpeg, qwen_tokenizer):
    corpus = _corpus(tmp_path, photo_jpeg, good=3, missing=0)
    shards = tmp_path / "shards"
    _build(corpus, shards, check=True)
    out = tmp_path / "packed"
    p = run_cli("pack", "--input", str(shards), "--output", str(out), "--tokenizer",
                str(qwen_tokenizer), "--max-len", "64", "--progress", "quiet", check=False)
    assert p.returncode == 1, p.stderr
    assert "pack wrote no packs: all 3 samples were rejected" in p.stderr
    assert "longer than max_len: 3, e.g. shard-000000.tar key=g0 length" in p.stderr
    assert "Traceback" not in p.stderr
    assert len(read_jsonl(out / "rejects.jsonl")) == 3
    assert json.loads((out / "pack_stats.json").read_text())["packs"] == 0
    with pytest.raises(pack.RejectsError, match="no packs"):
        pack.pack(shards, tmp_path / "api", qwen_tokenizer, max_len=64, progress="quiet")


def test_pack_over_the_reject_limit_exits_1(tmp_path, photo_rgb, photo_jpeg, qwen_tokenizer):
    from conftest import jpeg_bytes

    corpus = _corpus(tmp_path, photo_jpeg, good=1, missing=0)
    # Three large images (many image tokens) and one small: a small --max-len rejects 3 of 4.
    lines = corpus.read_text().splitlines()
    for i in range(3):
        (tmp_path / f"big{i}.jpg").write_bytes(jpeg_bytes(photo_rgb[: 500 - i, :500]))
        lines.append(json.dumps({"id": f"big{i}", "image": f"big{i}.jpg", "caption": "a man"}))
    corpus.write_text("\n".join(lines) + "\n")
    shards = tmp_path / "shards"
    _build(corpus, shards, check=True)
    args = ["pack", "--input", str(shards), "--tokenizer", str(qwen_tokenizer), "--max-len",
            "200", "--progress", "quiet"]
    p = run_cli(*args, "--output", str(tmp_path / "p1"), check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "pack rejected 3 of 4 samples (75.0%, more than --max-reject-rate 0.5)" in p.stderr
    assert "longer than max_len: 3, e.g. shard-000000.tar key=big0" in p.stderr
    assert "packed 1, rejects 3" in p.stdout
    p = run_cli(*args, "--output", str(tmp_path / "p2"), "--max-reject-rate", "1", check=False)
    assert p.returncode == 0, p.stderr
