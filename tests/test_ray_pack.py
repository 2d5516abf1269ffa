"""`pack` on Ray (a private local cluster, 2 CPUs) writes the same bytes as one process, also
when a worker is killed mid-task or the driver is interrupted and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_and_kill_a_task, run_cli, tree_digest

ray = pytest.importorskip("ray")

from llava_ov15 import pack  # noqa: E402
from llava_ov15.data.tokenizer import qwen_tokenizer_json  # noqa: E402
from llava_ov15.demo.corpus import CorpusSpec, write_corpus  # noqa: E402
from llava_ov15.distributed.tasks import FAULT_PAUSE_ENV  # noqa: E402

OPTS = {"max_len": 2048, "packs_per_shard": 5, "progress": "quiet"}
DIGEST = ("*.tar", "*.tar.idx", "manifest.json", "rejects.jsonl", "tokenizer.json",
          ".nv-meta/*.json", ".nv-meta/*.yaml", ".nv-meta/index.uuid")


def digest(out: Path) -> dict:
    """Every output file; pack_stats.json without its timings (which differ run to run)."""
    d = tree_digest(out, DIGEST)
    stats = json.loads((out / "pack_stats.json").read_text())
    stats.pop("throughput")
    d["pack_stats.json"] = stats
    assert not list(out.glob("*.partial"))
    return d


@pytest.fixture(scope="module")
def tokenizer() -> str:
    return str(qwen_tokenizer_json())


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """~60 built samples (caption / conversations / messages, multi-image) in 6 shards."""
    root = tmp_path_factory.mktemp("raypacksrc")
    corpus = write_corpus(root, CorpusSpec(n=60, seed=5, min_side=96, max_side=1400,
                                           near_dup_fraction=0.0, multi_image_fraction=0.15,
                                           text_only_fraction=0.05,
                                           shapes=("caption", "conversations", "messages")))
    out = root / "shards"
    run_cli("build", "--input", str(corpus), "--output", str(out), "--samples-per-shard", "10",
            "--phash", "off", "--progress", "quiet")
    return out


@pytest.fixture(scope="module")
def reference(shards, tokenizer, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raypackref") / "out"
    pack.pack(shards, out, tokenizer, workers=1, **OPTS)
    return out


def test_pack_on_ray_writes_the_same_files_as_one_process(shards, tokenizer, reference,
                                                          cluster, tmp_path):
    out = tmp_path / "out"
    s = pack.pack(shards, out, tokenizer, ray_address="local", **OPTS)
    assert digest(out) == digest(reference)
    r = s["ray"]
    n_sources = len(list(shards.glob("*.tar")))
    assert r["phases"]["pack-scan"]["tasks"] == n_sources
    assert r["phases"]["pack-copy"]["tasks"] == n_sources
    assert r["phases"]["pack-finalize"]["tasks"] == s["shards"] > 1
    # Metadata only crosses the object store, never image bytes.
    source_bytes = sum(p.stat().st_size for p in shards.glob("*.tar"))
    assert 0 < r["object_store_bytes"] < source_bytes / 10


def test_killing_a_worker_mid_copy_task_gives_the_same_output(shards, tokenizer, reference,
                                                             cluster, tmp_path, monkeypatch):
    # Each copy task pauses 1.5 s after writing, before reporting: a kill then is mid-task.
    monkeypatch.setenv(FAULT_PAUSE_ENV, "pack-copy=1.5")
    out = tmp_path / "out"
    summary, killed = run_and_kill_a_task(
        lambda: pack.pack(shards, out, tokenizer, ray_address="local", **OPTS),
        "llava-pack-copy", "copy")
    assert digest(out) == digest(reference)
    # The killed worker's task ran again elsewhere.
    copies = [x for x in summary["ray"]["tasks"] if x["phase"] == "pack-copy"]
    assert killed not in {x["pid"] for x in copies}


def test_interrupted_driver_resumes_copying_only_unfinished_sources(shards, tokenizer, reference,
                                                                    cluster, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, FAULT_PAUSE_ENV: "pack-copy=1.0"}
    cmd = [sys.executable, "-m", "llava_ov15.cli.pack", "pack", "--input", str(shards),
           "--output", str(out), "--tokenizer", tokenizer, "--max-len", "2048",
           "--packs-per-shard", "5", "--progress", "quiet", "--ray", "local"]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = out / ".llava-pack" / "checkpoint.json"
    deadline = time.monotonic() + 90
    done = 0
    while time.monotonic() < deadline and p.poll() is None:
        try:
            done = sum(json.loads(ckpt.read_text())["done"])
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= 2:
            p.send_signal(signal.SIGINT)  # Ctrl-C
            break
        time.sleep(0.05)
    _, err = p.communicate(timeout=60)
    assert done >= 2, err
    assert p.returncode == 130, err
    assert "--resume" in err
    n_sources = len(list(shards.glob("*.tar")))
    s = pack.pack(shards, out, tokenizer, ray_address="local", resume=True, **OPTS)
    assert 2 <= s["resumed_shards"] < n_sources
    copies = s["ray"]["phases"]["pack-copy"]["tasks"]
    assert copies == n_sources - s["resumed_shards"]
    assert digest(out) == digest(reference)
