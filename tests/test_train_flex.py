"""FlexAttention packed attention, the fused chunked cross entropy and selective recompute:
each equals the reference path (explicit mask, full logits, no recompute) in loss and gradients,
at TP 1 and TP 2 (2-process gloo); the vision tower's flex path equals its SDPA path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "python"), "PYTHONWARNINGS": "ignore",
       "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=[1, 2], ids=["tp1", "tp2"])
def checks(request):
    pytest.importorskip("megatron.core")
    tp = request.param
    script = [str(ROOT / "tests" / "train_flex_checks.py"), str(tp)]
    cmd = [sys.executable, *script] if tp == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(tp),
        "--master-port", str(_free_port()), *script]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                         cwd=ROOT, start_new_session=True)
    try:
        out, err = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # torchrun and its workers
        out, err = p.communicate()
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert p.returncode == 0 and lines, out[-3000:] + err[-5000:]
    res = json.loads(lines[-1][len("RESULT "):])
    assert res["tp"] == tp
    # the batch exercises packing: several sub-samples, several images of different sizes
    assert res["n_sub"] >= 3 and res["n_images"] >= 2 and len(res["image_sizes"]) >= 2
    return res


def _close(res, name):
    """fp32: per-token losses within 1e-5, every gradient within 5e-6 of the largest one."""
    r = res[name]
    assert not r["names_differ"], name  # same parameters receive gradients
    assert r["loss"] <= 1e-5, (name, r)
    assert r["grad"] <= 5e-6 * max(1.0, res["ref_grad_max"]), (name, r, res["ref_grad_max"])


def test_flex_attention_matches_mask_path(checks):
    assert checks["core"]["flex"] == "FlexCoreAttention"
    assert checks["vision_attention"]["flex"] == "flex"
    _close(checks, "flex")


def test_chunked_cross_entropy_matches_full_logits(checks):
    _close(checks, "chunked")


def test_selective_recompute_checkpoints_attention_core_and_matches(checks):
    for name in ("selective", "flex_selective"):
        assert checks["llm_checkpoints_core"][name] and checks["vision_checkpoints_core"][name]
    assert not checks["llm_checkpoints_core"]["flex"]
    assert checks["selective"]["loss"] == 0.0 and checks["selective"]["grad"] == 0.0
    _close(checks, "flex_selective")


def test_flex_full_recompute_and_chunked_loss_together(checks):
    _close(checks, "flex_full_chunked")


# ---- vision tower (plain PyTorch, no megatron) -------------------------------------------------
def _vision_run(tower, pv, grid):
    tower.zero_grad()
    out = tower(pv, grid)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in tower.named_parameters()}


@pytest.mark.parametrize("recompute", ["off", "selective"])
def test_vision_tower_flex_matches_sdpa_with_mixed_image_sizes(recompute):
    from llava_ov15.model.config import tiny_config
    from llava_ov15.model.vision import VisionTower

    torch.manual_seed(0)
    cfg = tiny_config().vision
    tower = VisionTower(cfg).train()
    for p in tower.parameters():  # non-trivial weights everywhere (zeros would hide errors)
        torch.nn.init.normal_(p, std=0.2)
    grid = torch.tensor([[1, 4, 6], [1, 2, 2], [1, 8, 4]])
    pv = torch.randn(int(grid.prod(-1).sum()), cfg.patch_dim)
    tower.set_recompute(recompute)
    ref_out, ref_grads = _vision_run(tower, pv, grid)
    tower.attention = "flex"
    out, grads = _vision_run(tower, pv, grid)
    assert out.shape == (int(grid.prod(-1).sum()) // 4, cfg.out_hidden_size)
    assert (out - ref_out).abs().max() < 1e-5
    for n, g in ref_grads.items():
        assert (grads[n] - g).abs().max() <= 1e-5 * max(1.0, float(g.abs().max())), n
    # images do not see each other: changing one image leaves the others' tokens unchanged
    pv2 = pv.clone()
    pv2[:24] += 1.0
    with torch.no_grad():
        other = tower(pv2, grid)
    assert torch.equal(other[6:], out[6:]) and not torch.allclose(other[:6], out[:6])


def test_padded_document_mask_leaves_real_tokens_unchanged():
    """The CUDA vision path pads the sequence to a multiple of VISION_PAD with a segment of its
    own; on CPU the same padding must give the unpadded result (and finite pads)."""
    from llava_ov15.model import flex_attention as fx

    torch.manual_seed(1)
    seg = torch.tensor([[0] * 5 + [1] * 9 + [2] * 3])
    q, k, v = (torch.randn(1, 2, 17, 8, requires_grad=True) for _ in range(3))
    plain = fx.attend(q, k, v, fx.document_mask(seg, causal=False))
    padded = fx.attend(q, k, v, fx.document_mask(seg, causal=False, length=40))
    assert padded.shape == plain.shape and torch.allclose(padded, plain, atol=1e-6)
    padded.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    mask = (seg[0, :, None] == seg[0, None, :])[None, None]
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(plain, ref, atol=1e-6)


# ---- configuration ---------------------------------------------------------------------------
def test_recompute_accepts_old_booleans_and_new_modes():
    from llava_ov15.train.config import ConfigError, load_config

    assert load_config(None, ["train.recompute=true"]).train.recompute == "full"
    assert load_config(None, ["train.recompute=false"]).train.recompute == "off"
    assert load_config(None, ["train.recompute=selective"]).train.recompute == "selective"
    with pytest.raises(ConfigError, match="train.recompute: must be off, full or selective"):
        load_config(None, ["train.recompute=layers"])
    with pytest.raises(ConfigError, match="parallel.attention: must be auto, te, flex or mask"):
        load_config(None, ["parallel.attention=flash"])
    with pytest.raises(ConfigError, match="train.loss_chunk_tokens: must be >= 0"):
        load_config(None, ["train.loss_chunk_tokens=-5"])


def test_auto_attention_is_mask_on_cpu_and_flex_is_explicit():
    pytest.importorskip("megatron.core")
    from llava_ov15.train.megatron_model import resolve_attention

    if torch.cuda.is_available():
        pytest.skip("CPU rule")
    assert resolve_attention("auto") == "mask"
    assert resolve_attention("flex") == "flex"
    with pytest.raises(RuntimeError, match="needs TransformerEngine"):
        resolve_attention("te")


def test_flop_counter_selective_and_labelled_head():
    from llava_ov15.model.config import tiny_config
    from llava_ov15.train.metrics import FlopCounter, labelled_tokens

    mc = tiny_config()
    labels = torch.tensor([[-100, 5, 6, -100, 7, 8, 9, -100]])
    cu = torch.tensor([0, 3, 8])
    # targets: 0->5, 1->6 (2 is a sub-sample end), 3->7, 4->8, 5->9 (6->-100)
    assert labelled_tokens(labels, cu) == 5
    batch = {"input_ids": torch.zeros_like(labels), "labels": labels, "cu_seqlens": cu}
    off = FlopCounter(mc, True, True, True, "off").batch_flops(batch)
    sel = FlopCounter(mc, True, True, True, "selective").batch_flops(batch)
    full = FlopCounter(mc, True, True, True, True).batch_flops(batch)
    attn = FlopCounter(mc, True, True, True).llm_attention(cu)
    assert sel == pytest.approx(off + attn) and off < sel < full
    head = 2.0 * labels.numel() * mc.text.hidden_size * mc.text.vocab_size * 3  # fwd + bwd
    lab = FlopCounter(mc, True, True, True, "off", labelled_head_only=True).batch_flops(batch)
    assert lab == pytest.approx(off - head * (1 - 5 / 8))


# ---- the trainer, end to end -----------------------------------------------------------------
def _train(tmp: Path, *sets: str) -> list[dict]:
    cmd = [sys.executable, "-m", "llava_ov15.train", "--config",
           str(ROOT / "configs/tiny/stage1.5_mid_training.yaml"), "--set", "train.steps=2",
           "--set", "train.lr=1e-3", "--set", "log.progress=log", "--set",
           "log.tensorboard=false", "--set", f"log.dir={tmp}"]
    for s in sets:
        cmd += ["--set", s]
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-5000:]
    return [json.loads(x) for x in (tmp / "metrics.jsonl").read_text().splitlines()]


_PROBE = """
import json, sys
from llava_ov15.train import trainer
from llava_ov15.train.config import load_config
cfg = load_config(sys.argv[1], sys.argv[2:])
model, raw, mc, tcfg = trainer.build_model(cfg, trainer.init_runtime(cfg))
attn = raw.language.decoder.layers[0].self_attention
print("PROBE " + json.dumps({"core": type(attn.core_attention).__name__,
      "llm_core_checkpointed": attn.checkpoint_core_attention,
      "vision": raw.vision.attention, "vision_core": raw.vision.blocks[0].attn.checkpoint_core,
      "vision_full": raw.vision.gradient_checkpointing, "chunk": raw.loss_chunk_tokens}))
"""


def test_trainer_builds_what_the_config_names():
    pytest.importorskip("megatron.core")
    cfg = str(ROOT / "configs/tiny/stage1.5_mid_training.yaml")
    p = subprocess.run([sys.executable, "-c", _PROBE, cfg, "parallel.attention=flex",
                        "train.recompute=selective", "train.loss_chunk_tokens=16"],
                       capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("PROBE ")]
    assert p.returncode == 0 and lines, p.stderr[-4000:]
    assert json.loads(lines[-1][6:]) == {
        "core": "FlexCoreAttention", "llm_core_checkpointed": True, "vision": "flex",
        "vision_core": True, "vision_full": False, "chunk": 16}


def test_trainer_flex_selective_chunked_equals_mask_full_logits(tmp_path):
    """The config reaches the model: two optimizer steps with flex attention, selective
    recompute and the chunked loss give the reference run's losses and gradient norms."""
    pytest.importorskip("megatron.core")
    ref = _train(tmp_path / "ref", "parallel.attention=mask", "train.recompute=false",
                 "train.loss_chunk_tokens=0")
    got = _train(tmp_path / "flex", "parallel.attention=flex", "train.recompute=selective",
                 "train.loss_chunk_tokens=16")
    assert [r["step"] for r in got] == [1, 2]
    for a, b in zip(ref, got, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a, b)
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * max(1.0, a["grad_norm"]), (a, b)
