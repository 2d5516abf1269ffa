"""Trainer throughput at the real layer shapes: tokens/s, MFU/HFU and peak memory per attention
path × activation recompute mode.

Builds the LLaVA-OV-1.5 8B and/or 4B layer shapes (hidden size, heads, GQA groups, FFN, vocab,
the full RICE-ViT) with a reduced number of LLM layers so one GPU holds weights, the fp32 Adam
state of megatron's distributed optimizer and the activations; runs packed 8192-token rows of
synthetic image+caption samples (real processor: smart_resize, patchify, placeholder expansion;
a realistic image-token share) in bf16, one optimizer step per `--micro-batches` micro-batches.
For every (attention, recompute) cell it prints:

  tok/s   packed-row tokens per second (median step time after the warm-up steps)
  MFU     model FLOPs (LLM + ViT + adapter, fwd+bwd, llava_ov15.train.metrics.FlopCounter) per
          second / the device's dense bf16 peak (`--peak-tflops`, else metrics.PEAK_TFLOPS by
          device name: H100/H200 989, A100 312 TFLOP/s)
  HFU     the same with the recomputed forward FLOPs counted (what the reference's ~45% means)
  peak    torch.cuda.max_memory_allocated during the cell (weights + optimizer + activations)

Attention paths: flex (PyTorch FlexAttention), mask (explicit block mask: O(S²) memory, expect
OOM at 8k without recompute), te (only when TransformerEngine is installed). A cell that runs out
of memory prints OOM and the next one starts.

  python benches/train_gpu.py                      # 8b and 4b, all cells (a GPU)
  python benches/train_gpu.py --model 8b --attention flex --recompute selective,full
  python benches/train_gpu.py --smoke              # tiny shapes on CPU, no MFU (test suite)
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

SHAPES = {"8b": "llava-ov-1.5-8b", "4b": "llava-ov-1.5-4b"}


def model_config(name: str, layers: int, vit_layers: int | None, smoke: bool):
    import dataclasses

    from llava_ov15.model.config import get_config, tiny_config

    if smoke:
        mc = tiny_config(vocab_size=512, text_hidden=64, vision_hidden=32, layers=2)
        return mc
    mc = get_config(SHAPES[name])
    text = dataclasses.replace(mc.text, num_layers=layers)
    vision = mc.vision if vit_layers is None else dataclasses.replace(mc.vision,
                                                                      num_layers=vit_layers)
    return dataclasses.replace(mc, text=text, vision=vision)


def make_batches(mc, args) -> list[dict]:
    from llava_ov15.train.data import SyntheticPackedSource, load_tokenizer

    src = SyntheticPackedSource(mc, load_tokenizer("word", mc), args.seq_len, args.micro_batch,
                                seed=7, image_sizes=args.image_sizes,
                                caption_words=args.caption_words)
    return [next(src) for _ in range(args.packs)]


def build(mc, attention: str, recompute: str, args, device):
    """megatron model + DDP + distributed Adam, the trainer's layout (bf16 params, fp32 grads and
    main params), initialised on the device (fast; the values do not matter here)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from llava_ov15.train import megatron_model as mm

    bf16 = not args.smoke
    tcfg = mm.transformer_config(mc, bf16=bf16, recompute=recompute)
    tcfg.use_cpu_initialization = not device.type == "cuda"
    raw = mm.build_model(mc, tcfg, attention, loss_chunk_tokens=args.loss_chunk_tokens)
    raw.to(device)
    torch.manual_seed(0)  # same weights in every cell: first-step losses must agree
    with torch.no_grad():
        for n, p in raw.named_parameters():
            if p.ndim == 1 and "norm" in n:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    ddp = DistributedDataParallel(
        tcfg, DistributedDataParallelConfig(grad_reduce_in_fp32=True,
                                            use_distributed_optimizer=True), raw)
    opt = get_megatron_optimizer(OptimizerConfig(
        optimizer="adam", lr=1e-5, bf16=bf16, use_distributed_optimizer=True,
        params_dtype=torch.bfloat16 if bf16 else torch.float32, clip_grad=1.0), [ddp])
    return raw, ddp, opt


def step(ddp, opt, batches, device) -> float:
    """One optimizer step over the micro-batches; -> mean per-token loss (token mean)."""
    from llava_ov15.train.metrics import labelled_tokens

    ddp.zero_grad_buffer()
    opt.zero_grad()
    total = 0.0
    for b in batches:
        n = max(1, labelled_tokens(b["labels"], b["cu_seqlens"]))
        b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
        tok = ddp(b["input_ids"], b["position_ids"], b["cu_seqlens"], b["labels"],
                  b["pixel_values"], b["image_grid_thw"])
        loss = tok.sum() / n / len(batches)
        loss.backward()
        total += float(loss.detach())
    ddp.finish_grad_sync()
    opt.step()
    return total


def run_cell(mc, batches, attention, recompute, args, device, peak):
    from llava_ov15.train.metrics import FlopCounter

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # the mask path's score buffer lives in megatron's global buffer: start every cell without
    from megatron.core import parallel_state as ps

    ps.destroy_global_memory_buffer()
    ps._set_global_memory_buffer()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    raw = ddp = opt = None
    try:
        raw, ddp, opt = build(mc, attention, recompute, args, device)
        per_step = [batches[(i * args.micro_batches + j) % len(batches)]
                    for i in range(args.steps) for j in range(args.micro_batches)]
        times, losses = [], []
        for i in range(args.steps):
            mbs = per_step[i * args.micro_batches:(i + 1) * args.micro_batches]
            sync()
            t0 = time.perf_counter()
            losses.append(step(ddp, opt, mbs, device))
            sync()
            times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        return {"attention": attention, "recompute": recompute, "oom": True}
    finally:
        del raw, ddp, opt
        gc.collect()
    dt = statistics.median(times[args.warmup:] or times)
    mbs = per_step[:args.micro_batches]
    tokens = sum(int(b["input_ids"].numel()) for b in mbs)
    chunked = args.loss_chunk_tokens > 0
    model_f = sum(FlopCounter(mc, True, True, True, "off", chunked).batch_flops(b) for b in mbs)
    hw_f = sum(FlopCounter(mc, True, True, True, recompute, chunked).batch_flops(b) for b in mbs)
    if not all(x == x and abs(x) != float("inf") for x in losses):
        raise RuntimeError(f"non-finite loss in {attention}/{recompute}: {losses}")
    rec = {"attention": attention, "recompute": recompute, "oom": False, "loss": losses[0],
           "step_s": dt, "tokens_per_s": tokens / dt, "model_tflops": model_f / dt / 1e12,
           "mfu": model_f / dt / (peak * 1e12) if peak else None,
           "hfu": hw_f / dt / (peak * 1e12) if peak else None,
           "peak_mem_gb": (torch.cuda.max_memory_allocated() / 2**30
                           if device.type == "cuda" else None)}
    return rec


def fmt(rec, first) -> str:
    """One table row; `first` = the shape's first finished cell (the speed ratio's peer)."""
    head = f"{rec['attention']:>5} {rec['recompute']:>9}"
    if rec["oom"]:
        return f"{head}  OOM"
    def pct(v):
        return f"{100 * v:5.1f}%" if v is not None else "   n/a"

    mem = f"{rec['peak_mem_gb']:6.1f} GB" if rec["peak_mem_gb"] is not None else "     n/a"
    ratio = rec["tokens_per_s"] / first["tokens_per_s"]
    return (f"{head} {rec['tokens_per_s']:9.0f} {ratio:5.2f}x {pct(rec['mfu'])} "
            f"{pct(rec['hfu'])} {mem}  ({rec['step_s'] * 1e3:.0f} ms/step, "
            f"first-step loss {rec['loss']:.4f})")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="8b,4b", help="comma list of 8b, 4b")
    ap.add_argument("--layers", type=int, default=8, help="LLM layers (reduced to fit one GPU)")
    ap.add_argument("--vit-layers", type=int, default=None, help="default: all (24)")
    ap.add_argument("--attention", default=None, help="comma list; default flex,mask(,te)")
    ap.add_argument("--recompute", default="off,selective,full")
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--micro-batch", type=int, default=1, help="packs per micro-batch")
    ap.add_argument("--micro-batches", type=int, default=2, help="per optimizer step")
    ap.add_argument("--packs", type=int, default=4, help="distinct packs, cycled")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2, help="steps left out (compile, allocator)")
    ap.add_argument("--loss-chunk-tokens", type=int, default=2048)
    ap.add_argument("--peak-tflops", type=float, default=None, help="device dense bf16 peak")
    ap.add_argument("--json", type=Path, default=None, help="also write the records here")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny shapes on CPU, 2 steps, no MFU: checks that the bench runs")
    args = ap.parse_args(argv)
    args.image_sizes, args.caption_words = (224, 896), (20, 120)
    if args.smoke:
        args.model, args.seq_len, args.packs, args.steps, args.warmup = "8b", 128, 2, 2, 1
        args.micro_batches, args.image_sizes, args.caption_words = 1, (28, 84), (3, 12)
        args.loss_chunk_tokens = min(args.loss_chunk_tokens, 32) or 0

    from llava_ov15.train import cpu_compat, trainer
    from llava_ov15.train.megatron_model import te_available
    from llava_ov15.train.metrics import device_peak_tflops

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        ap.error("no CUDA device: run with --smoke for the CPU check")
    trainer.init_parallel(1, 1)
    device = cpu_compat.device()
    peak = None if args.smoke else (args.peak_tflops or device_peak_tflops())
    attentions = (args.attention.split(",") if args.attention else
                  ["flex", "mask"] + (["te"] if te_available() else []))
    recomputes = args.recompute.split(",")
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"# device {name}; peak bf16 {peak or 'unknown'} TFLOP/s; {args.seq_len}-token packs "
          f"× {args.micro_batch} × {args.micro_batches} micro-batches/step; "
          f"loss_chunk_tokens {args.loss_chunk_tokens}", flush=True)
    records = []
    for shape in args.model.split(","):
        mc = model_config(shape, args.layers, args.vit_layers, args.smoke)
        batches = make_batches(mc, args)
        img = sum(int((b["input_ids"] == mc.tokens.image).sum()) for b in batches)
        tot = sum(int(b["input_ids"].numel()) for b in batches)
        lab = sum(int((b["labels"] != -100).sum()) for b in batches)
        t, v = mc.text, mc.vision
        print(f"\n## {shape}: LLM {t.num_layers} layers × hidden {t.hidden_size} (heads "
              f"{t.num_heads}/{t.num_kv_heads}, FFN {t.intermediate_size}, vocab {t.vocab_size});"
              f" ViT {v.num_layers} × {v.hidden_size}; image tokens {100 * img / tot:.0f}%, "
              f"labelled {100 * lab / tot:.0f}%", flush=True)
        print(f"{'attn':>5} {'recompute':>9} {'tok/s':>9} {'ratio':>6} {'MFU':>6} {'HFU':>6} "
              f"{'peak':>9}")
        first = None
        for attention in attentions:
            for recompute in recomputes:
                rec = run_cell(mc, batches, attention, recompute, args, device, peak)
                rec["model"] = shape
                records.append(rec)
                first = first or (None if rec["oom"] else rec)
                print(fmt(rec, first or rec), flush=True)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    return records


if __name__ == "__main__":
    main()
