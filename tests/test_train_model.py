"""Trainer model checks (megatron-core on CPU): equivalence with the HF-layout model, packed-row
loss, conversion round trip, per-stage freezing, loss modes. One subprocess runs them all
(tests/train_checks.py) so megatron's CPU adaptation and process group stay out of pytest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("megatron.core")


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_checks")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python"), "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([sys.executable, str(ROOT / "tests" / "train_checks.py"), str(out)],
                       capture_output=True, text=True, env=env, timeout=600)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert p.returncode == 0 and lines, p.stdout[-3000:] + p.stderr[-5000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_megatron_model_matches_hf_layout_model(checks):
    assert checks["token_mean_vs_hf"] < 1e-5
    assert checks["logits_vs_hf"] < 1e-4


def test_packed_row_loss_equals_subsamples_alone(checks):
    assert checks["n_subsamples"] >= 2
    assert checks["subsample_losses_diff"] < 1e-5


def test_conversion_round_trip_bit_exact(checks):
    assert checks["roundtrip_keys_equal"]
    assert checks["roundtrip_bitexact"]


def test_converted_model_logits_equal_hf(checks):
    assert checks["converted_logits_vs_hf"] < 1e-4


def test_stage1_trains_only_the_adapter(checks):
    adapter = [n for n in checks["stage1_all"] if n.startswith("vision.merger.")]
    assert adapter
    assert checks["stage1_changed"] == adapter
    assert checks["stage1_grad"] == adapter


@pytest.mark.parametrize("stage", ["1.5", "2"])
def test_later_stages_train_everything(checks, stage):
    everything = checks[f"stage{stage}_all"]
    assert checks[f"stage{stage}_changed"] == everything
    # vision tower, adapter and LLM all receive gradients
    grads = checks[f"stage{stage}_grad"]
    for prefix in ("vision.blocks.", "vision.merger.", "language.decoder.", "language.embedding"):
        assert any(n.startswith(prefix) for n in grads), prefix


def test_loss_modes_match_reference_definitions(checks):
    assert checks["pack_mean_loss_diff"] < 1e-5  # mean over packs of per-pack token means
    assert checks["token_mean_loss_diff"] < 1e-5  # global token mean
