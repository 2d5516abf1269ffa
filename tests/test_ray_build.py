"""`llava-pack build` on Ray (a private local Ray, 2 CPUs, shared by the module) writes the
same bytes as the single-process build: shards, indexes, .nv-meta, manifest, rejects and
stats (its timing apart), with a worker killed mid-task, and after an interrupted driver
resumes (only unfinished shards are written again)."""

from __future__ import annotations

import _thread
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from conftest import jpeg_bytes, png_bytes, ray_task_pids, run_cli  # noqa: E402
from llava_ov15 import pack  # noqa: E402
from llava_ov15.distributed import build as ray_build  # noqa: E402
from llava_ov15.distributed.tasks import FAULT_PAUSE_ENV  # noqa: E402

# Text cleaning with a report and caption dedup: their per-record logs travel as metadata.
OPTIONS = {"samples_per_shard": 4, "progress": "quiet", "workers": 1, "text_report": 3,
           "dedup_text": True}


def _image(rng: random.Random, i: int) -> bytes:
    import numpy as np

    arr = np.random.default_rng(i).integers(0, 255, (rng.randint(20, 48), rng.randint(20, 48), 3),
                                            dtype=np.uint8)
    return png_bytes(arr) if i % 3 == 0 else jpeg_bytes(arr)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    """Two JSONL files (ids, no ids, repeated ids, blank lines, invalid lines, missing images,
    exact duplicates), a JSON array and a Parquet file with embedded images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("ray-corpus")
    rng = random.Random(3)
    (root / "img").mkdir()
    names = []
    for i in range(12):
        data = _image(rng, i)
        name = f"img/{i}.{'png' if i % 3 == 0 else 'jpg'}"
        (root / name).write_bytes(data)
        names.append(name)

    def lines(n: int, tag: str) -> list[str]:
        out = []
        for i in range(n):
            r = rng.random()
            messy = " &amp;  " if i % 4 == 0 else " "  # html entity + whitespace: cleaned
            rec: dict = {"image": rng.choice(names), "caption": f"{tag}{messy}picture {i % 9}"}
            if r < 0.5:
                rec["id"] = f"{tag}-{i % 7}"  # repeats: key fallback
            if r > 0.92:
                rec["image"] = "img/missing.jpg"
            out.append(json.dumps(rec))
            if r < 0.08:
                out.append("")  # blank line
            if 0.08 <= r < 0.12:
                out.append("{not json")
        return out

    a = lines(40, "a")
    a[5:5] = [a[3], a[3]]  # exact duplicates
    (root / "a.jsonl").write_text("\n".join(a) + "\n")
    (root / "b.jsonl").write_text("\n".join(lines(25, "b")))  # no final newline
    (root / "c.json").write_text(json.dumps([json.loads(x) for x in lines(9, "c") if x
                                             and not x.startswith("{not")], indent=1))
    rows = [{"id": f"p{i % 5}", "image": {"bytes": _image(rng, 100 + i % 6), "path": None},
             "caption": f"parquet {i % 4}"} for i in range(23)]
    pq.write_table(pa.Table.from_pylist(rows), root / "d.parquet", row_group_size=5)
    return [str(root / n) for n in ("a.jsonl", "b.jsonl", "c.json", "d.parquet")]


def _tree(out: Path) -> dict[str, bytes]:
    """Every output file except the job's private state; stats.json without its timing."""
    files = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_dir() or rel.startswith(".llava-pack/"):
            continue
        data = p.read_bytes()
        if rel == "stats.json":
            stats = json.loads(data)
            stats.pop("throughput")
            data = json.dumps(stats, sort_keys=True).encode()
        files[rel] = data
    return files


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ray-ref") / "out"
    pack.build(corpus, out, max_reject_rate=None, **OPTIONS)
    return _tree(out)


def _assert_same(out: Path, reference: dict[str, bytes]) -> None:
    got = _tree(out)
    assert sorted(got) == sorted(reference)
    differ = [name for name in reference if got[name] != reference[name]]
    assert not differ, f"differ from the single-process build: {differ}"


def _ray(corpus, out, **kw):
    return ray_build.build(corpus, str(out), {**OPTIONS, **kw.pop("options", {})},
                           ray_address="local", **kw)


def test_every_output_file_equals_the_local_build(cluster, corpus, reference, tmp_path):
    # Small partitions: byte ranges split the JSONL files mid-way, row ranges the Parquet.
    s = _ray(corpus, tmp_path / "out", partition_bytes=700)
    _assert_same(tmp_path / "out", reference)
    assert s["ray"]["partitions"] > 8 and s["ray"]["shards"] == s["shards"] >= 8
    assert s["stats"]["rejects_by_reason"]["duplicate"] >= 2
    assert s["stats"]["blank_lines"] > 0
    assert s["stats"]["text"]["samples_changed"] > 0 and (tmp_path / "out" / "text_report.jsonl"
                                                          ).stat().st_size > 0
    assert {"build-scan", "build-write"} <= set(s["ray"]["phases"])
    # One partition per file is the same output again.
    _ray(corpus, tmp_path / "big", partition_bytes=1 << 30)
    _assert_same(tmp_path / "big", reference)


def test_pack_build_and_the_cli_take_a_ray_address(cluster, corpus, reference, tmp_path):
    s = pack.build(corpus, tmp_path / "out", max_reject_rate=None, ray_address="local",
                   **OPTIONS)
    assert s["ray"]["written"] == s["shards"]
    _assert_same(tmp_path / "out", reference)
    # The command line starts (and stops) its own private Ray in its process.
    args = [a for f in corpus for a in ("--input", f)]
    args += ["--samples-per-shard", "4", "--progress", "log", "--max-reject-rate", "1",
             "--text-report", "3", "--dedup-text"]
    run_cli("build", *args, "--output", str(tmp_path / "cli"), "--ray", "local")
    _assert_same(tmp_path / "cli", reference)


def _when(cond, action, timeout: float = 60.0) -> threading.Thread:
    """Run `action()` in a thread as soon as `cond()` holds."""
    def run():
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                action()
                return
            time.sleep(0.05)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_worker_killed_mid_task_changes_nothing(cluster, corpus, reference, tmp_path,
                                                  monkeypatch):
    # Write tasks pause after their work: a worker is killed for real while one does.
    monkeypatch.setenv(FAULT_PAUSE_ENV, "build-write=0.8")
    out = tmp_path / "out"
    done = out / ".llava-pack" / "ray" / "done"
    killed: list[int] = []

    def kill():
        pids = ray_task_pids("llava-build-write")
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    watcher = _when(lambda: done.is_dir() and any(done.iterdir())
                    and ray_task_pids("llava-build-write"), kill)
    _ray(corpus, out, partition_bytes=2000)
    watcher.join()
    assert killed, "no write task was caught mid-task"
    _assert_same(out, reference)


def test_an_interrupted_driver_resumes_writing_only_unfinished_shards(cluster, corpus,
                                                                      reference, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv(FAULT_PAUSE_ENV, "build-write=4")
    out = tmp_path / "out"
    done = out / ".llava-pack" / "ray" / "done"
    _when(lambda: done.is_dir() and any(done.iterdir()), _thread.interrupt_main)
    with pytest.raises(KeyboardInterrupt):
        _ray(corpus, out, partition_bytes=2000)
    finished = {p.name for p in done.iterdir()}
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    monkeypatch.delenv(FAULT_PAUSE_ENV)
    s = _ray(corpus, out, partition_bytes=2000, options={"resume": True})
    assert s["ray"]["scanned"] == 0
    assert s["ray"]["written"] == s["shards"] - len(finished) > 0
    for name in finished:
        shard = json.loads((done / name).read_text())["name"]
        assert (out / shard).stat().st_mtime_ns == mtimes[shard], f"{shard} was written again"
    _assert_same(out, reference)
    # A complete build resumed is left as it is.
    again = _ray(corpus, out, options={"resume": True})
    assert again["shards"] == s["shards"] and "ray" not in again
