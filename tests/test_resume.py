"""Crash safety: after `kill -9` at any point, `--resume` finishes with byte-identical output,
and a partial shard is never visible under its final name."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from conftest import run_cli, tree_digest
from llava_ov15.demo.corpus import CorpusSpec, write_corpus

ARGS = ["--samples-per-shard", "8", "--phash", "exact", "--dhash", "--workers", "1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return write_corpus(root, CorpusSpec(n=160, seed=7, max_side=900, near_dup_fraction=0.1,
                                         shapes=("caption", "conversations")))


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    t0 = time.monotonic()
    run_cli("build", "--input", str(corpus), "--output", str(out), "--progress", "quiet", *ARGS)
    return out, time.monotonic() - t0


def _final_shards_are_complete(out):
    for tar in out.glob("*.tar"):
        with tarfile.open(tar) as tf:  # raises on a truncated archive
            tf.getmembers()
        assert (out / (tar.name + ".idx")).exists(), f"{tar.name} visible without its index"


def _counts(out):
    stats = json.loads((out / "stats.json").read_text())
    stats.pop("throughput")
    return stats


def test_kill_9_then_resume_is_byte_identical(corpus, reference, tmp_path):
    ref, ref_seconds = reference
    rng = random.Random(0)
    total_kills = 0
    for attempt in range(4):
        out = tmp_path / f"out{attempt}"
        cmd = [sys.executable, "-m", "llava_ov15.cli.pack", "build", "--input", str(corpus),
               "--output", str(out), "--progress", "quiet", *ARGS]
        kills = 0
        for _ in range(3):  # kill the first runs at random moments, including very early
            p = subprocess.Popen(cmd + (["--resume"] if out.exists() else []),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.05, max(0.1, ref_seconds * 0.6)))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            p.wait()
            if out.exists():
                _final_shards_are_complete(out)
        run_cli("build", "--input", str(corpus), "--output", str(out), "--resume",
                "--progress", "quiet", *ARGS)
        assert tree_digest(out) == tree_digest(ref), f"attempt {attempt} ({kills} kills)"
        # The energon index too (built from rows recorded per committed shard).
        meta = (".nv-meta", ("*",))
        assert tree_digest(out / meta[0], meta[1]) == tree_digest(ref / meta[0], meta[1])
        assert not list(out.glob("*.partial"))
        # Counts come from the checkpoints' snapshots: a record counted before a kill and
        # again after it would show here (throughput is timing, so it may differ).
        assert _counts(out) == _counts(ref), f"attempt {attempt}: stats.json counts differ"
        total_kills += kills
    assert total_kills >= 1, "no run was killed mid-way; the test proved nothing"


def test_resume_of_a_complete_build_changes_nothing(reference, corpus):
    ref, _ = reference
    before = tree_digest(ref)
    p = run_cli("build", "--input", str(corpus), "--output", str(ref), "--resume", *ARGS)
    assert "already complete" in p.stderr
    assert tree_digest(ref) == before
    manifest = json.loads((ref / "manifest.json").read_text())
    assert manifest["totals"]["records"] == 160
