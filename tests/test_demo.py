"""The README's first command: the demo runs build → pack → train → convert → eval."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_the_whole_toolchain(tmp_path):
    out = tmp_path / "demo"
    p = subprocess.run([sys.executable, "-m", "llava_ov15.demo", "--out", str(out), "-n", "40",
                        "--steps", "3"], capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    assert manifest["totals"]["records"] == 40
    stats = json.loads((out / "packed" / "pack_stats.json").read_text())
    assert stats["samples"] + stats["rejects"] == manifest["totals"]["samples"]
    metrics = (out / "train" / "metrics.jsonl").read_text().splitlines()
    assert len([m for m in map(json.loads, metrics) if "loss" in m]) == 3
    assert (out / "model" / "config.json").exists() and (out / "model" / "tokenizer.json").exists()
    results = json.loads((out / "eval" / "results.json").read_text())
    assert {"mme", "pope", "vqav2_val"} <= set(results["benchmarks"])
    assert (out / "eval" / "report.html").stat().st_size > 1000
