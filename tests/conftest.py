"""Shared fixtures: small real-photo corpora and helpers to run `llava-pack`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava_ov15.demo.corpus import CorpusSpec, write_corpus

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `llava-pack` exactly as a user would (same interpreter, console-script module)."""
    cmd = [sys.executable, "-m", "llava_ov15.cli.pack", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def ray_task_pids(name: str) -> list[int]:
    """Ray worker processes running task `name` (their title is `ray::name`), to kill one
    mid-task for real."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(f"ray::{name}".encode()):
                pids.append(int(d.name))
    return pids


def run_and_kill_a_task(job, task: str, what: str):
    """Run `job()` in a thread and SIGKILL the first Ray worker seen running `task` (its
    process title is `ray::task`; pause the task with FAULT_PAUSE_ENV so it is caught
    mid-task). Returns (job's result, killed pid); fails if no task was seen or the job
    raised."""
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = job()
        except BaseException as e:  # reported by the assertion below
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline and t.is_alive():
        pids = ray_task_pids(task)
        if pids:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    t.join(120)
    assert killed is not None, f"no {what} task was seen running"
    assert "error" not in result, result.get("error")
    return result["value"], killed


@pytest.fixture(scope="module")
def cluster():
    """One private local Ray (2 CPUs) per test module that asks for it: starting Ray takes
    seconds, and jobs given ``ray_address="local"`` inside it use it."""
    pytest.importorskip("ray")
    from llava_ov15.distributed import connect

    with connect("local", num_cpus=2) as c:
        yield c


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def shard_files(out: Path) -> list[Path]:
    return sorted(out.glob("*.tar"))


def tree_digest(out: Path, names=("*.tar", "*.tar.idx", "manifest.json", "rejects.jsonl")) -> dict:
    """sha256 of every deterministic output file."""
    files = sorted({p for pat in names for p in out.glob(pat)})
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def jpeg_bytes(img: np.ndarray | Image.Image, quality: int = 90, **kw) -> bytes:
    im = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, **kw)
    return buf.getvalue()


def png_bytes(img: np.ndarray | Image.Image, **kw) -> bytes:
    im = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


@pytest.fixture(scope="session")
def mixed_corpus(tmp_path_factory) -> Path:
    """120 samples of real photo crops in all three shapes, incl. multi-image and text-only."""
    root = tmp_path_factory.mktemp("mixed")
    spec = CorpusSpec(n=120, seed=1, max_side=640, near_dup_fraction=0.1,
                      multi_image_fraction=0.1, text_only_fraction=0.05,
                      shapes=("caption", "conversations", "messages"))
    return write_corpus(root, spec)


@pytest.fixture(scope="session")
def photo_rgb() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def photo_jpeg(photo_rgb) -> bytes:
    return jpeg_bytes(photo_rgb[:256, :320])


@pytest.fixture(scope="session")
def plain_shards(mixed_corpus, tmp_path_factory) -> Path:
    """`llava_ov15.pack.build` output with uneven shards (17 samples each, last one short)."""
    from llava_ov15 import pack

    out = tmp_path_factory.mktemp("plain") / "out"
    pack.build(str(mixed_corpus), str(out), samples_per_shard=17, progress="quiet")
    return out


@pytest.fixture(scope="session")
def qwen_tokenizer(tmp_path_factory) -> Path:
    from llava_ov15.data.tokenizer import qwen_tokenizer_json

    return qwen_tokenizer_json()
