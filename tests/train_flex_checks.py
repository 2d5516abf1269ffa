"""Attention / loss / recompute variants of the megatron model against the reference path, run
in a subprocess by tests/test_train_flex.py (plain python for TP 1, torchrun for TP 2).

Every variant is built with the same layout-independent init and run on the same packed batch
(several sub-samples per row, images of different sizes); rank 0 prints one `RESULT {json}` line
with, per variant, the largest |difference| of the per-token loss and of every parameter
gradient against the reference (mask attention, unfused logits, no recompute), maximised over
the TP ranks.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

VARIANTS = {
    "flex": dict(attention="flex"),
    "chunked": dict(loss_chunk_tokens=7),  # chunks that do not divide the labelled tokens
    "selective": dict(recompute="selective"),
    "flex_selective": dict(attention="flex", recompute="selective"),
    "flex_full_chunked": dict(attention="flex", recompute="full", loss_chunk_tokens=64),
}


def run_variant(mc, batch, tp: int, attention: str = "mask", recompute: str = "off",
                loss_chunk_tokens: int = 0):
    from llava_ov15.train import trainer
    from llava_ov15.train.megatron_model import build_model, transformer_config

    tcfg = transformer_config(mc, tp=tp, recompute=recompute)
    m = build_model(mc, tcfg, attention, loss_chunk_tokens=loss_chunk_tokens)
    trainer.init_weights(m, tcfg, 0.05, seed=11)
    m.train()
    loss = m(batch["input_ids"], batch["position_ids"], batch["cu_seqlens"], batch["labels"],
             batch["pixel_values"], batch["image_grid_thw"])
    # a non-uniform weighting, so every token's gradient path matters
    w = torch.linspace(0.5, 1.5, loss.numel()).view_as(loss)
    (loss * w).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}
    return loss.detach(), grads, m


def main() -> None:
    from megatron.core import parallel_state as ps

    from llava_ov15.model.config import tiny_config
    from llava_ov15.train import trainer
    from llava_ov15.train.data import SyntheticPackedSource, load_tokenizer

    tp = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    trainer.init_parallel(tp, 1)
    torch.set_default_dtype(torch.float32)
    mc = tiny_config()
    src = SyntheticPackedSource(mc, load_tokenizer("word", mc), 96, 2, seed=5)
    batch = next(src)
    res: dict = {"n_sub": int(len(batch["cu_seqlens"]) - 1),
                 "n_images": int(len(batch["image_grid_thw"])),
                 "image_sizes": sorted({tuple(g) for g in batch["image_grid_thw"].tolist()}),
                 "tp": ps.get_tensor_model_parallel_world_size()}
    ref_loss, ref_grads, ref_model = run_variant(mc, batch, tp)
    res["ref_loss"] = float(ref_loss.sum())
    res["ref_grad_params"] = len(ref_grads)
    res["ref_grad_max"] = max(float(g.abs().max()) for g in ref_grads.values())
    res["vision_attention"] = {}
    for name, kw in VARIANTS.items():
        loss, grads, m = run_variant(mc, batch, tp, **kw)
        if m.vision is not None:
            res["vision_attention"][name] = m.vision.attention
        attn = m.language.decoder.layers[0].self_attention
        res.setdefault("core", {})[name] = type(attn.core_attention).__name__
        res.setdefault("llm_checkpoints_core", {})[name] = attn.checkpoint_core_attention
        res.setdefault("vision_checkpoints_core", {})[name] = (
            m.vision is not None and m.vision.blocks[0].attn.checkpoint_core)
        d = torch.tensor([float((loss - ref_loss).abs().max()),
                          max(float((grads[k] - g).abs().max()) for k, g in ref_grads.items()),
                          float(set(grads) != set(ref_grads))])
        if dist.get_world_size() > 1:
            dist.all_reduce(d, op=dist.ReduceOp.MAX)
        res[name] = {"loss": d[0].item(), "grad": d[1].item(), "names_differ": bool(d[2])}
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps(res), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
