"""What `llava-pack build` reads: several inputs, blank lines — nothing is lost quietly, and
input lines = samples + rejects + blank lines. JSON arrays: test_json_array.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import read_jsonl, run_cli, shard_files
from llava_ov15 import pack


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture()
def two_parts(tmp_path, photo_jpeg) -> tuple[Path, Path]:
    for i in range(4):
        (tmp_path / f"{i}.jpg").write_bytes(photo_jpeg[:-2] + bytes([i]) + photo_jpeg[-2:])
    a = _write(tmp_path / "a.jsonl", [
        {"id": "a0", "image": "0.jpg", "caption": "zero"},
        {"id": "a1", "image": "1.jpg", "caption": "one"},
    ])
    b = _write(tmp_path / "b.jsonl", [
        {"id": "b0", "image": "2.jpg", "caption": "two"},
        {"id": "b1", "image": "missing.jpg", "caption": "lost"},
        {"image": "3.jpg", "caption": "no id"},
    ])
    return a, b


def _keys(out: Path) -> list[str]:
    import tarfile

    keys = []
    for shard in shard_files(out):
        with tarfile.open(shard) as tf:
            keys += [m.name.split(".", 1)[0] for m in tf.getmembers() if m.name.endswith(".json")]
    return keys


def test_repeated_input_reads_every_file_in_the_order_given(tmp_path, two_parts):
    a, b = two_parts
    out = tmp_path / "out"
    run_cli("build", "--input", str(b), "--input", str(a), "--output", str(out),
            "--progress", "quiet", "--phash", "off")
    # b first, as given (not sorted, not only the last --input).
    assert _keys(out) == ["b0", "F0000-L000000003", "a0", "a1"]
    [rej] = read_jsonl(out / "rejects.jsonl")
    assert (rej["file"], rej["line"], rej["id"]) == (str(b), 2, "b1")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["input"] == [str(b), str(a)]
    assert [f["path"] for f in manifest["options"]["input_files"]] == [str(b), str(a)]
    assert manifest["totals"]["records"] == 5
    # The Python API takes a list; resume checks the inputs like any other option.
    api = tmp_path / "api"
    pack.build([b, a], api, phash="off", progress="quiet")
    assert _keys(api) == _keys(out)
    p = run_cli("build", "--input", str(b), "--output", str(out), "--resume", "--phash", "off",
                check=False)
    assert p.returncode == 1 and "different input" in p.stderr
    p = run_cli("build", "--input", str(b), "--input", str(a), "--output", str(out), "--resume",
                "--phash", "off", "--progress", "log", check=False)
    assert p.returncode == 0 and "already complete" in p.stderr


def test_an_input_named_twice_is_refused(tmp_path, two_parts):
    a, _ = two_parts
    p = run_cli("build", "--input", str(a), "--input", str(tmp_path / "*.jsonl"), "--output",
                str(tmp_path / "out"), check=False)
    assert p.returncode == 1 and "named twice" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()


def test_blank_lines_are_counted_so_lines_equal_samples_rejects_and_blanks(tmp_path, two_parts):
    a, b = two_parts
    text = a.read_text().splitlines()
    a.write_text("\n" + text[0] + "\n\n  \t\n" + text[1] + "\n\n")  # 4 blank lines
    out = tmp_path / "out"
    run_cli("build", "--input", str(a), "--input", str(b), "--output", str(out),
            "--progress", "quiet", "--phash", "off")
    stats = json.loads((out / "stats.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    lines = sum(len(p.read_text().splitlines()) for p in (a, b))
    assert stats["blank_lines"] == 4 == manifest["totals"]["blank_lines"]
    assert stats["samples"] + stats["rejects"] + stats["blank_lines"] == lines == 9
    assert stats["records"] == 5


@pytest.mark.parametrize("command", ["pack", "buckets"])
def test_pack_and_buckets_refuse_a_repeated_input(tmp_path, command):
    p = run_cli(command, "--input", str(tmp_path / "a"), "--input", str(tmp_path / "b"),
                "--output", str(tmp_path / "o"), check=False)
    assert p.returncode == 2 and "--input given twice" in p.stderr
    assert not (tmp_path / "o").exists()
