"""Issue 18 trainer extras, the parts that need no process group: the contrastive term's value,
the image-token cap, hard-sample mining's draws and state, and the config errors.

Model-level checks (gradients, micro-batch loss scaling) run in one subprocess
(tests/train_extras_checks.py); multi-process runs are in tests/test_train_extras_runs.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llava_ov15.model.config import get_config
from llava_ov15.model.processor import patchify as np_patchify
from llava_ov15.train.batching import cap_image_tokens, patchify, unpatchify
from llava_ov15.train.config import ConfigError, load_config
from llava_ov15.train.contrastive import document_pairs, info_nce
from llava_ov15.train.data import SyntheticPackedSource, load_tokenizer
from llava_ov15.train.mining import HardMiningSource

ROOT = Path(__file__).resolve().parents[1]
MC = get_config("tiny")
IMG = MC.tokens.image


# ---- contrastive ---------------------------------------------------------------------------
def _hand_info_nce(img: list[list[float]], txt: list[list[float]], scale: float) -> float:
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    img, txt = [unit(v) for v in img], [unit(v) for v in txt]

    def ce(q, keys):
        total = 0.0
        for i, a in enumerate(q):
            logits = [scale * sum(x * y for x, y in zip(a, b, strict=True)) for b in keys]
            total += -logits[i] + math.log(sum(math.exp(z) for z in logits))
        return total / len(q)

    return 0.5 * (ce(img, txt) + ce(txt, img))


def test_contrastive_loss_equals_hand_computed_case():
    # one packed row of 14 tokens: doc 0 = [0, 6), doc 1 = [6, 11), padding [11, 14)
    ids = torch.tensor([[1, IMG, IMG, 2, 3, 4, 1, IMG, 2, 3, 4, 0, 0, 0]])
    labels = torch.full_like(ids, -100)
    labels[0, [3, 4, 8, 9]] = 5  # caption tokens of each document
    seg = torch.tensor([[0] * 6 + [1] * 5 + [2] * 3])
    vision = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 1.0]])  # 2 tokens of doc 0, 1 of doc 1
    hidden = torch.zeros(14, 1, 2)
    hidden[3, 0], hidden[4, 0] = torch.tensor([2.0, 1.0]), torch.tensor([0.0, 1.0])
    hidden[8, 0], hidden[9, 0] = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 1.0])
    hidden[12, 0] = torch.tensor([9.0, 9.0])  # padding: never pooled
    img, txt = document_pairs(vision, hidden, ids, labels, seg, IMG)
    assert img.tolist() == [[2.0, 1.0], [0.0, 1.0]]
    assert txt.tolist() == [[1.0, 1.0], [0.0, 2.0]]
    scale = 1 / 0.07
    got = info_nce(img, txt, torch.tensor(scale))
    want = _hand_info_nce([[2, 1], [0, 1]], [[1, 1], [0, 2]], scale)
    assert abs(float(got) - want) < 1e-5, (float(got), want)


def test_contrastive_documents_without_image_or_caption_are_left_out():
    ids = torch.tensor([[IMG, 2, 3, 1, 2, 3]])
    labels = torch.tensor([[-100, 5, 5, -100, 5, 5]])  # doc 1 has a caption but no image
    seg = torch.tensor([[0, 0, 0, 1, 1, 1]])
    img, txt = document_pairs(torch.ones(1, 2), torch.ones(6, 1, 2), ids, labels, seg, IMG)
    assert img.shape == txt.shape == (1, 2)
    assert float(info_nce(img, txt, torch.tensor(10.0))) == 0.0  # one pair: no negatives


# ---- image-token cap -----------------------------------------------------------------------
def test_unpatchify_inverts_the_processor_patchify():
    x = np.random.default_rng(0).normal(size=(3, 56, 84)).astype(np.float32)
    pv = torch.from_numpy(np_patchify(x))
    assert torch.equal(unpatchify(pv, 4, 6), torch.from_numpy(x))
    assert torch.equal(patchify(torch.from_numpy(x)), pv)


def _rows(n: int = 2, seed: int = 3):
    src = SyntheticPackedSource(MC, load_tokenizer("word", MC), 256, n, seed=seed,
                                image_sizes=(56, 168), caption_words=(2, 4))
    return [src.next_row() for _ in range(n)]


def _image_tokens(rows) -> int:
    return sum(int(g[1] * g[2]) // 4 for r in rows for g in r["image_grid_thw"])


def test_image_cap_shrinks_the_largest_images_and_keeps_every_sample():
    rows = _rows()
    before = _image_tokens(rows)
    cap = before // 2
    out, shrunk = cap_image_tokens(rows, cap, IMG, MC.tokens.endoftext)
    assert shrunk >= 1 and _image_tokens(out) <= cap
    for r, o in zip(rows, out, strict=True):
        assert o["input_ids"].shape == r["input_ids"].shape  # same row length, re-padded
        assert sum(o["seq_lens"]) == len(o["input_ids"])
        # every sample and caption is kept: the same text tokens and labels, in order
        assert torch.equal(o["labels"][o["labels"] != -100], r["labels"][r["labels"] != -100])
        keep = (r["input_ids"] != IMG) & (r["input_ids"] != MC.tokens.endoftext)
        keep_o = (o["input_ids"] != IMG) & (o["input_ids"] != MC.tokens.endoftext)
        assert torch.equal(o["input_ids"][keep_o], r["input_ids"][keep])
        # placeholders, patches and grids agree; positions restart per sub-sample
        g = o["image_grid_thw"]
        assert int((o["input_ids"] == IMG).sum()) == int((g[:, 1] * g[:, 2]).sum()) // 4
        assert len(o["pixel_values"]) == int((g[:, 1] * g[:, 2]).sum())
        assert bool((g[:, 1:] % 2 == 0).all())
        assert torch.equal(o["position_ids"], torch.cat([torch.arange(n) for n in o["seq_lens"]]))
    # the smallest images were left alone (only the largest shrink)
    sizes = [int(g[1] * g[2]) for r in rows for g in r["image_grid_thw"]]
    new = [int(g[1] * g[2]) for r in out for g in r["image_grid_thw"]]
    assert min(sizes) == min(new) or sum(n < s for n, s in zip(new, sizes, strict=True)) > 1


def test_image_cap_under_the_limit_changes_nothing():
    rows = _rows()
    out, shrunk = cap_image_tokens(rows, _image_tokens(rows), IMG, MC.tokens.endoftext)
    assert shrunk == 0 and out is rows


def test_image_cap_stops_at_the_minimum_resolution():
    rows = _rows()
    out, _ = cap_image_tokens(rows, 1, IMG, MC.tokens.endoftext)
    assert all(int(g[1] * g[2]) * 14 * 14 >= 3136 for r in out for g in r["image_grid_thw"])


# ---- hard-sample mining --------------------------------------------------------------------
def _miner(boost: float = 3.0, warmup: int = 0) -> HardMiningSource:
    src = SyntheticPackedSource(MC, load_tokenizer("word", MC), 128, 1, seed=1, num_packs=8,
                                packed=False)
    return HardMiningSource(src, fraction=0.25, boost=boost, warmup_steps=warmup, seed=5)


def _epoch0(m: HardMiningSource) -> None:
    for step in range(1, 9):
        row = m.next_row()
        m.record(step, [row["key"]], [float(int(row["key"][4:]))])  # loss = pack index


def test_hard_mining_draws_the_hardest_fraction_boost_times():
    m = _miner()
    _epoch0(m)
    keys = [m.next_row()["key"] for _ in range(12)]  # epoch 1: 6 + 2·3 rows
    counts = {k: keys.count(k) for k in set(keys)}
    assert counts == {**{f"pack{i}": 1 for i in range(6)}, "pack6": 3, "pack7": 3}
    assert keys[6:9] == ["pack6"] * 3  # repeated right after itself
    assert m.boosted == 4


def test_hard_mining_waits_for_warmup_and_epoch_one():
    m = _miner(warmup=100)
    _epoch0(m)
    assert [m.next_row()["key"] for _ in range(8)] == [f"pack{i}" for i in range(8)]


def test_hard_mining_fractional_boost_is_deterministic_for_a_seed():
    def draws():
        m = _miner(boost=1.5)
        _epoch0(m)
        return [m.next_row()["key"] for _ in range(9)]

    a = draws()
    assert a == draws()
    assert a.count("pack6") in (1, 2) and a.count("pack7") in (1, 2)


def test_hard_mining_state_round_trip_mid_repeat():
    m = _miner()
    _epoch0(m)
    for _ in range(7):  # pack0..5, then pack6's first draw: two repeats pending
        m.next_row()
    state = m.state_dict()
    assert state["repeat_left"] == 2
    rest = [m.next_row() for _ in range(5)]
    m2 = _miner()
    m2.load_state_dict(state)
    again = [m2.next_row() for _ in range(5)]
    assert [r["key"] for r in rest] == [r["key"] for r in again] == \
        ["pack6", "pack6", "pack7", "pack7", "pack7"]
    for a, b in zip(rest, again, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["pixel_values"], b["pixel_values"])


# ---- config errors -------------------------------------------------------------------------
@pytest.mark.parametrize("sets, world, key", [
    (["train.global_batch_size=3"], 2, "train.global_batch_size"),
    (["train.global_batch_size=3", "data.micro_batch_size=2"], 1, "train.global_batch_size"),
    (["train.contrastive_weight=-1"], 1, "train.contrastive_weight"),
    (["train.contrastive_weight=0.5", "parallel.pp=2", "train.stage=2"], 2,
     "train.contrastive_weight"),
    (["data.num_packs=null"], 1, "train.hard_mining"),  # endless synthetic data
    (["train.hard_mining.fraction=1.5", "data.num_packs=8"], 1, "train.hard_mining.fraction"),
    (["train.hard_mining.boost=0.5", "data.num_packs=8"], 1, "train.hard_mining.boost"),
    (["train.hard_mining.frac=0.2"], 1, "train.hard_mining.frac"),
    (["data.max_image_tokens_per_step=0"], 1, "data.max_image_tokens_per_step"),
])
def test_extras_config_errors_name_the_key(sets, world, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(ROOT / "configs/tiny/stage2_instruct.yaml", sets, world_size=world,
                    resolve=False)


@pytest.mark.parametrize("stage", ["1", "1.5", "2"])
@pytest.mark.parametrize("model", ["tiny", "llava-ov-1.5-4b", "llava-ov-1.5-8b"])
def test_recipes_load_with_their_extras(model, stage):
    name = {"1": "stage1_alignment", "1.5": "stage1.5_mid_training", "2": "stage2_instruct"}
    cfg = load_config(ROOT / f"configs/{model}/{name[stage]}.yaml", resolve=False)
    assert (cfg.train.contrastive_weight > 0) == (stage == "1")
    assert (cfg.train.hard_mining is not None) == (stage == "2")


# ---- model-level checks (one subprocess) ---------------------------------------------------
@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    pytest.importorskip("megatron.core")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python"), "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "tests" / "train_extras_checks.py")],
                       capture_output=True, text=True, env=env, timeout=600)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert p.returncode == 0 and lines, p.stdout[-3000:] + p.stderr[-5000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_stage1_contrastive_gradients_reach_only_the_adapter_and_temperature(checks):
    assert checks["contrastive_loss"] > 0
    grads = checks["stage1_grad"]
    assert "contrastive.logit_scale" in grads
    assert any(n.startswith("vision.merger.") for n in grads)
    assert all(n.startswith("vision.merger.") or n == "contrastive.logit_scale" for n in grads)
    assert checks["temperature_changed"]


def test_contrastive_term_adds_to_the_lm_loss_with_its_weight(checks):
    assert checks["weighted_total_diff"] < 1e-5


@pytest.mark.parametrize("loss", ["token_mean", "pack_mean"])
def test_micro_batch_split_gives_the_single_batch_loss_and_update(checks, loss):
    assert checks[f"{loss}_loss_diff"] < 1e-5
    assert checks[f"{loss}_grad_rel_diff"] < 1e-5
