"""`llava-pack build` on JSON arrays (`[{…}, {…}]`, `.json` and `.json.zst`): the same output
as the equivalent JSON Lines, rejects that name the element and its byte offset, `--resume`,
and damaged files — every element is a written sample or a reject, always."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import read_jsonl, run_cli, tree_digest

QUIET = ["--progress", "quiet", "--phash", "off", "--max-reject-rate", "1"]


def _stats(out: Path) -> dict:
    return json.loads((out / "stats.json").read_text())


def _images(root: Path, photo_jpeg: bytes, n: int) -> list[str]:
    names = []
    for i in range(n):
        # A byte before the JPEG end marker: distinct content, same picture.
        (root / f"{i}.jpg").write_bytes(photo_jpeg[:-2] + bytes([i % 256]) + photo_jpeg[-2:])
        names.append(f"{i}.jpg")
    return names


def _records(names: list[str]) -> list[dict]:
    out = []
    for i, name in enumerate(names):
        if i % 3 == 0:
            out.append({"id": f"c{i}", "image": name, "caption": f"photo {i}"})
        elif i % 3 == 1:
            out.append({"id": f"v{i}", "image": name, "conversations": [
                {"from": "human", "value": "<image>\nWhat is it?"},
                {"from": "gpt", "value": f"Thing {i}."}]})
        else:
            out.append({"image": name, "instruction": "Describe the photo.",
                        "response": f"Photo {i}, «ünïcode»."})
    return out


@pytest.mark.parametrize("name", ["corpus.json", "corpus.json.zst"])
def test_a_json_array_builds_like_the_same_records_as_json_lines(tmp_path, photo_jpeg, name):
    import zstandard

    records = _records(_images(tmp_path, photo_jpeg, 9))
    lines = tmp_path / "corpus.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in records))
    text = json.dumps(records, indent=2, ensure_ascii=False).encode()
    array = tmp_path / name
    array.write_bytes(zstandard.ZstdCompressor().compress(text) if name.endswith(".zst")
                      else text)
    a, b = tmp_path / "from_array", tmp_path / "from_lines"
    run_cli("build", "--input", str(array), "--output", str(a), *QUIET)
    run_cli("build", "--input", str(lines), "--output", str(b), *QUIET)
    # Keys of id-less records differ by design (L{element} vs L{line}); both are 9 samples.
    sa, sb = _stats(a), _stats(b)
    assert sa["samples"] == sb["samples"] == 9 and sa["rejects"] == 0
    assert sa["kinds"] == sb["kinds"] == {"caption": 3, "conversations": 3, "instruction": 3}
    assert sa["blank_lines"] == 0
    assert _samples(a) == _samples(b)


def _samples(out: Path) -> list[dict]:
    """Every per-sample json in order, without `source` (its `line` is an element number for
    an array) and the id-less records' keys (`L{element}` vs `L{line}`)."""
    import tarfile

    docs = []
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    doc = json.loads(tf.extractfile(m).read())
                    doc.pop("source")
                    docs.append(doc)
    return docs


def test_rejects_name_the_element_and_its_byte_offset(tmp_path, photo_jpeg):
    names = _images(tmp_path, photo_jpeg, 2)
    good = [{"id": "a", "image": names[0], "caption": "one"},
            {"id": "b", "image": "missing.jpg", "caption": "two"},
            {"id": "c", "image": names[1], "instruction": "Hi", "response": "Yo"}]
    parts = [json.dumps(r) for r in good]
    text = "[\n  " + ",\n  ".join(parts) + "\n]\n"
    path = tmp_path / "data.json"
    path.write_text(text)
    out = tmp_path / "out"
    run_cli("build", "--input", str(path), "--output", str(out), *QUIET)
    [rej] = read_jsonl(out / "rejects.jsonl")
    assert rej["element"] == rej["line"] == 1 and rej["id"] == "b"
    assert rej["offset"] == text.index(parts[1])
    assert rej["category"] == "missing_file"
    stats = _stats(out)
    assert (stats["records"], stats["samples"], stats["rejects"]) == (3, 2, 1)


def _build_bad(tmp_path: Path, data: bytes, name: str = "bad.json") -> tuple[dict, list[dict]]:
    path = tmp_path / name
    path.write_bytes(data)
    out = tmp_path / ("out_" + name)
    p = run_cli("build", "--input", str(path), "--output", str(out), *QUIET, check=False)
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode in (0, 1), p.stderr
    return _stats(out), read_jsonl(out / "rejects.jsonl")


def _elements(tmp_path: Path, photo_jpeg: bytes, n: int) -> list[bytes]:
    names = _images(tmp_path, photo_jpeg, n)
    return [json.dumps({"id": f"e{i}", "image": names[i], "caption": f"c {i}"}).encode()
            for i in range(n)]


def test_a_bad_element_in_the_middle_is_one_reject_and_the_rest_is_built(tmp_path, photo_jpeg):
    els = _elements(tmp_path, photo_jpeg, 6)
    els[2] = b'{"id": "e2", "image": "2.jpg" "caption": "missing comma"}'
    els[4] = b'{"id": "e4", "image": "4.jpg", "caption": "bad \xff\xfe utf-8"}'
    data = b"[" + b",\n".join(els) + b"]"
    stats, rejects = _build_bad(tmp_path, data)
    assert (stats["samples"], stats["rejects"]) == (4, 2)
    by_el = {r["element"]: r for r in rejects}
    assert set(by_el) == {2, 4}
    assert by_el[2]["offset"] == data.index(els[2])
    assert "malformed JSON at byte" in by_el[2]["reason"]
    assert "resumed at byte" in by_el[2]["reason"]
    assert by_el[4]["offset"] == data.index(els[4]) and "invalid UTF-8" in by_el[4]["reason"]


def test_a_truncated_array_keeps_every_complete_element(tmp_path, photo_jpeg):
    els = _elements(tmp_path, photo_jpeg, 4)
    full = b"[" + b",".join(els) + b"]"
    cut = full[: full.index(els[3]) + 20]
    stats, rejects = _build_bad(tmp_path, cut)
    assert (stats["samples"], stats["rejects"]) == (3, 1)
    assert rejects[0]["element"] == 3 and rejects[0]["offset"] == full.index(els[3])
    assert rejects[0]["reason"].startswith("truncated")
    # Cut right after a complete element: nothing lost, and the missing ] is reported.
    stats, rejects = _build_bad(tmp_path, full[:-1], "no_close.json")
    assert (stats["samples"], stats["rejects"]) == (4, 1)
    assert "closing ]" in rejects[0]["reason"]


def test_an_array_of_non_objects_is_all_rejects_with_a_clear_reason(tmp_path):
    stats, rejects = _build_bad(tmp_path, b'["a.jpg", 1, null, [1, 2]]')
    assert (stats["records"], stats["samples"], stats["rejects"]) == (4, 0, 4)
    assert {r["reason"] for r in rejects} == {"not a JSON object"}
    assert [r["element"] for r in rejects] == [0, 1, 2, 3]
    # Nothing written: exit 1, the example naming the element and its offset, not a "line".
    p = run_cli("build", "--input", str(tmp_path / "bad.json"), "--output",
                str(tmp_path / "again"), "--progress", "quiet", check=False)
    assert p.returncode == 1
    assert "bad.json element 0 (byte 1) not a JSON object" in p.stderr, p.stderr


def test_a_top_level_object_is_refused_up_front(tmp_path):
    path = tmp_path / "doc.json"
    path.write_text(json.dumps({"data": [{"id": "a", "caption": "x"}]}, indent=2))
    out = tmp_path / "out"
    p = run_cli("build", "--input", str(path), "--output", str(out), check=False)
    err = p.stderr.strip()
    assert p.returncode == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "one JSON object" in err and "jq -c '.KEY[]'" in err
    assert not out.exists()


def test_a_100_mb_string_is_one_reject_and_the_elements_around_it_are_built(tmp_path,
                                                                             photo_jpeg):
    els = _elements(tmp_path, photo_jpeg, 2)
    path = tmp_path / "huge.json"
    with path.open("wb") as f:
        f.write(b"[" + els[0] + b',\n{"id": "big", "caption": "')
        chunk = b"x" * (1 << 20)
        for _ in range(100):
            f.write(chunk)
        f.write(b'"},\n' + els[1] + b"]")
    out = tmp_path / "out"
    run_cli("build", "--input", str(path), "--output", str(out), *QUIET)
    stats = _stats(out)
    assert (stats["samples"], stats["rejects"]) == (2, 1)
    [rej] = read_jsonl(out / "rejects.jsonl")
    assert rej["element"] == 1 and rej["offset"] == len(els[0]) + 3
    assert "longer than 64 MiB" in rej["reason"]


def test_kill_9_then_resume_of_an_array_is_byte_identical(tmp_path):
    from llava_ov15.demo.corpus import CorpusSpec, write_corpus

    jsonl = write_corpus(tmp_path / "c", CorpusSpec(n=60, seed=5, max_side=700,
                                                    near_dup_fraction=0.0,
                                                    shapes=("caption", "conversations")))
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    array = jsonl.with_name("corpus.json")
    array.write_text(json.dumps(records, indent=1))
    args = ["--samples-per-shard", "4", "--phash", "exact", "--workers", "1"]
    ref = tmp_path / "ref"
    t0 = time.monotonic()
    run_cli("build", "--input", str(array), "--output", str(ref), "--progress", "quiet", *args)
    seconds = time.monotonic() - t0
    cmd = [sys.executable, "-m", "llava_ov15.cli.pack", "build", "--input", str(array),
           "--progress", "quiet", *args]
    rng = random.Random(1)
    resumed_mid_way = 0
    for attempt in range(8):  # until two runs were killed between checkpoints
        if resumed_mid_way >= 2:
            break
        out = tmp_path / f"out{attempt}"
        p = subprocess.Popen(cmd + ["--output", str(out)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 0.9) * seconds)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
        ckpt = out / ".llava-pack" / "checkpoint.json"
        if ckpt.exists():
            state = json.loads(ckpt.read_text())
            resumed_mid_way += 0 < state["next_index"] < len(records)
        run_cli("build", "--input", str(array), "--output", str(out), "--resume",
                "--progress", "quiet", *args)
        assert tree_digest(out) == tree_digest(ref), f"attempt {attempt}"
    assert resumed_mid_way, "no run was killed after a checkpoint; the test proved nothing"


def _write_text_array(path: Path, n: int) -> int:
    """n text-only instruction elements of ~480 bytes (200k ≈ 95 MB); returns the file size."""
    words = "the quick brown fox jumps over a lazy dog near the river bank at dawn".split()
    with path.open("w") as f:
        f.write("[\n")
        for i in range(n):
            text = " ".join(words[(i + k) % len(words)] for k in range(60))
            rec = {"id": f"s{i}", "instruction": f"Question {i}: {text[:120]}?",
                   "response": f"{text} ({i})"}
            f.write(("," if i else "") + json.dumps(rec) + "\n")
        f.write("]\n")
    return path.stat().st_size


def _peak_rss_mib(src: Path, out: Path) -> int:
    """Peak RSS (VmHWM) of a fresh process running the build: ru_maxrss would also count the
    parent's peak, which survives fork and exec."""
    code = ("from llava_ov15 import pack; "
            f"pack.build({str(src)!r}, {str(out)!r}, dedup='off', progress='quiet'); "
            "print([x.split()[1] for x in open('/proc/self/status') if x.startswith('VmHWM')][0])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, check=True)
    return int(p.stdout.split()[-1]) // 1024


def test_peak_memory_does_not_grow_with_the_array(tmp_path):
    small, big = tmp_path / "small.json", tmp_path / "big.json"
    _write_text_array(small, 20_000)
    size = _write_text_array(big, 200_000)
    assert size > 90 << 20
    rss_small = _peak_rss_mib(small, tmp_path / "o1")
    rss_big = _peak_rss_mib(big, tmp_path / "o2")
    stats = _stats(tmp_path / "o2")
    assert stats["samples"] == 200_000 and stats["kinds"] == {"instruction": 200_000}
    # Ten times the elements (95 MB): the same memory, give or take the key table (8 bytes
    # per sample) and allocator noise — far from the file's size.
    assert rss_big - rss_small < 32, (rss_small, rss_big)
    assert rss_big < 200, (rss_small, rss_big)
