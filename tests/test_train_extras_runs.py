"""Issue 18 trainer extras in real runs (`python -m llava_ov15.train`, 1- and 2-process gloo):
data read once per TP group and broadcast, the contrastive term across TP/DP, the image-token
cap, the out-of-memory retry and hard-sample mining's exact resume. Tiny model, few steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from test_train_run import ROOT, run

pytest.importorskip("megatron.core")
STAGE1 = str(ROOT / "configs/tiny/stage1_alignment.yaml")
STAGE2 = str(ROOT / "configs/tiny/stage2_instruct.yaml")


def records(log_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in
            (json.loads(x) for x in (log_dir / "metrics.jsonl").read_text().splitlines())}


def extra(ckpt: Path, step: int, rank: int) -> dict:
    return torch.load(ckpt / f"iter_{step:07d}" / "extra" / f"rank_{rank:05d}.pt",
                      weights_only=False)


# ---- hard mining, image cap, OOM retry (stage 2) -------------------------------------------
MINING = ["train.steps=5", "train.lr=1e-3", "data.num_packs=4", "train.hard_mining.fraction=0.25",
          "train.hard_mining.boost=3", "train.hard_mining.warmup_steps=2",
          "data.max_image_tokens_per_step=6", "train.inject_oom_at_step=2"]


@pytest.fixture(scope="module")
def mining(tmp_path_factory):
    """The uninterrupted stage-2 run: its metrics and its final checkpoint (which holds no
    temperature: the stage-1 runs below start from it, as stage 1 starts from a converted one)."""
    d = tmp_path_factory.mktemp("mining_ref")
    p = run(f"log.dir={d}", f"checkpoint.dir={d / 'ck'}", *MINING, config=STAGE2)
    assert "step 2: out of memory (injected" in p.stderr and "retrying once" in p.stderr
    return records(d), d / "ck"


@pytest.fixture(scope="module")
def mining_ref(mining):
    return mining[0]


def test_image_cap_triggers_are_counted(mining_ref):
    hits = [r["image_cap_hits"] for r in mining_ref.values()]
    assert all(0 <= h <= 2 for h in hits) and sum(hits) >= 1


def test_oom_in_a_step_is_retried_once_with_a_lower_cap(mining_ref):
    assert mining_ref[1]["oom_retries"] == 0
    assert mining_ref[2]["oom_retries"] == 1 and mining_ref[5]["oom_retries"] == 1
    assert mining_ref[2]["image_cap_hits"] >= 1  # the retry shrank images to the lower cap
    assert all(not r["skipped"] for r in mining_ref.values())


def test_hard_samples_are_drawn_more_often(mining_ref):
    # 4 packs, 2 per step: epoch 1 (from step 3) repeats the hardest pack twice more
    assert mining_ref[2]["hard_boosted_rows"] == 0
    assert mining_ref[5]["hard_boosted_rows"] >= 2


# ---- stage 1 contrastive term across layouts; data read once per TP group ------------------
def contrastive(mining) -> list[str]:
    return ["train.steps=2", "train.lr=1e-3", "train.contrastive_weight=0.5",
            "train.global_batch_size=2", f"checkpoint.load={mining[1]}"]


@pytest.fixture(scope="module")
def contrastive_ref(tmp_path_factory, mining):
    """One process, one micro-batch of both packs: every pack's documents are negatives."""
    d = tmp_path_factory.mktemp("contrastive_ref")
    run(f"log.dir={d}", "data.micro_batch_size=2", *contrastive(mining), config=STAGE1)
    return records(d)


def _same(got: dict, ref: dict, keys=("loss", "contrastive_loss")):
    for step, r in ref.items():
        for k in keys:
            assert got[step][k] == pytest.approx(r[k], abs=1e-5), (step, k, got[step][k], r[k])


def test_contrastive_loss_is_logged_beside_the_lm_loss(contrastive_ref):
    r = contrastive_ref[2]
    assert r["lm_loss"] == r["loss"] and r["contrastive_loss"] > 0
    assert 0 < r["temperature"] < 1


def test_tp2_reads_data_on_tp_rank_0_only_and_matches_one_process(contrastive_ref, mining,
                                                                   tmp_path):
    run(f"log.dir={tmp_path}", f"checkpoint.dir={tmp_path / 'ck'}", "parallel.tp=2",
        "data.micro_batch_size=2", *contrastive(mining), config=STAGE1, nproc=2)
    _same(records(tmp_path), contrastive_ref)
    # TP rank 1 never built a data source: it holds no data position; rank 0 read 4 packs
    assert extra(tmp_path / "ck", 2, 1)["data"] is None
    assert extra(tmp_path / "ck", 2, 0)["data"]["packs_consumed"] == 4


def test_dp2_gathers_contrastive_negatives_across_ranks(contrastive_ref, mining, tmp_path):
    """DP=2 with one pack per rank == one process with both packs in one micro-batch."""
    run(f"log.dir={tmp_path}", "parallel.dp=2", "data.micro_batch_size=1", *contrastive(mining),
        config=STAGE1, nproc=2)
    _same(records(tmp_path), contrastive_ref)


# ---- hard mining: an interrupted run resumes exactly ---------------------------------------
def test_hard_mining_resume_is_bit_exact(mining_ref, tmp_path):
    cut = tmp_path / "cut"
    p = run(f"log.dir={cut}", f"checkpoint.dir={cut / 'ck'}", "train.exit_after_steps=3",
            *MINING, config=STAGE2)
    assert "stopped by signal after step 3" in p.stderr
    state = extra(cut / "ck", 3, 0)["data"]
    assert state["kind"] == "hard_mining" and state["repeat_left"] >= 1  # stopped mid-repeat
    d = tmp_path / "resume"
    shutil.copytree(cut, d)
    run(f"log.dir={d}", f"checkpoint.dir={d / 'ck'}", *MINING, config=STAGE2, resume=True)
    got = records(d)
    assert sorted(got) == list(range(1, 6))
    assert [got[s]["loss"] for s in range(1, 6)] == [mining_ref[s]["loss"] for s in range(1, 6)]
