"""Trainer step throughput, FLOP rate / MFU and peak memory (megatron-core trainer, one process).

Runs `llava_ov15.train.trainer.train` for a few steps on the synthetic packed dataset and reports
the median over the steps after the warm-up ones, from the trainer's own metrics.jsonl:

  tokens/s            packed-row tokens (global batch · seq_len) per second
  TFLOP/s per device  model FLOPs actually executed (LLM + vision tower + adapter; see
                      llava_ov15.train.metrics), recompute included when on
  MFU                 TFLOP/s / peak (only with --peak-tflops or a known GPU)
  peak memory         CUDA max_memory_allocated, or the process's peak RSS (VmHWM) on CPU

Presets:
  --preset cpu-small  (default) hidden 256, 4 layers, ViT 128×2, 1024-token packs, fp32, CPU
  --preset gpu-1b     ~1B LLM (hidden 2048, 16 layers, 16/8 heads, FFN 6144) + the full
                      RICE-ViT (1024×24) at 8192-token packs, bf16, recompute, TE thd attention
                      when installed — the issue's MFU measurement (reference claims 45% HFU).

  PYTHONPATH=python python benches/train_step.py [--preset cpu-small] [--steps 6] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile

PRESETS = {
    "cpu-small": [
        "model.preset=tiny", "model.text.vocab_size=4096", "model.text.hidden_size=256",
        "model.text.num_layers=4", "model.text.num_heads=8", "model.text.num_kv_heads=4",
        "model.text.head_dim=32", "model.text.intermediate_size=768",
        "model.vision.hidden_size=128", "model.vision.num_layers=2", "model.vision.num_heads=4",
        "model.vision.intermediate_size=512", "data.seq_len=1024", "data.image_sizes=[56, 224]",
        "train.global_batch_size=2", "train.stage=1.5", "train.bf16=false",
    ],
    "gpu-1b": [
        "model.preset=llava-ov-1.5-4b", "model.text.hidden_size=2048",
        "model.text.num_layers=16", "model.text.num_heads=16", "model.text.num_kv_heads=8",
        "model.text.head_dim=128", "model.text.intermediate_size=6144",
        "data.seq_len=8192", "data.tokenizer=qwen", "data.image_sizes=[224, 896]",
        "data.min_pixels=3136", "train.global_batch_size=4", "train.stage=1.5",
        "train.bf16=true", "train.recompute=true", "model.tokens.published=true",
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = ap.parse_args()

    from llava_ov15.train.config import load_config
    from llava_ov15.train.trainer import train

    with tempfile.TemporaryDirectory() as d:
        sets = [*PRESETS[args.preset], f"train.steps={args.steps}", "train.lr=1e-5",
                "log.progress=quiet", "log.tensorboard=false", f"log.dir={d}", *args.set]
        if args.peak_tflops:
            sets.append(f"log.peak_tflops={args.peak_tflops}")
        cfg = load_config(None, sets)
        train(cfg)
        recs = [json.loads(x) for x in open(f"{d}/metrics.jsonl")]
    timed = recs[args.warmup:] or recs
    med = {k: statistics.median(r[k] for r in timed)
           for k in ("tokens_per_s", "tflops_per_device", "step_time_s")}
    mfu = [r["mfu"] for r in timed if r.get("mfu") is not None]
    out = {"preset": args.preset, "steps_timed": len(timed), **med,
           "mfu": statistics.median(mfu) if mfu else None,
           "peak_mem_gb": max(r["peak_mem_gb"] for r in recs),
           "final_loss": recs[-1]["loss"]}
    print(json.dumps(out))


if __name__ == "__main__":  # required: dist_checkpointing / torch.distributed spawn helpers
    sys.exit(main())
