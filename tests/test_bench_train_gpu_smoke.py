"""benches/train_gpu.py --smoke: the GPU throughput bench runs on CPU with tiny shapes (so it
never rots), every attention × recompute cell trains, and all cells start from the same loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_train_gpu_bench_smoke_runs_every_cell(tmp_path):
    pytest.importorskip("megatron.core")
    out = tmp_path / "cells.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python"), "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run([sys.executable, str(ROOT / "benches" / "train_gpu.py"), "--smoke",
                        "--json", str(out)], capture_output=True, text=True, env=env,
                       timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    recs = json.loads(out.read_text())
    cells = {(r["attention"], r["recompute"]) for r in recs}
    assert cells == {(a, r) for a in ("flex", "mask") for r in ("off", "selective", "full")}
    for r in recs:
        assert not r["oom"] and r["tokens_per_s"] > 0 and r["model_tflops"] > 0
        assert r["mfu"] is None  # no peak on CPU
    first = recs[0]["loss"]
    assert all(abs(r["loss"] - first) < 1e-4 for r in recs), [r["loss"] for r in recs]
    assert "tok/s" in p.stdout and "image tokens" in p.stdout
