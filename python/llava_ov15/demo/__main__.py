"""End-to-end demo on a generated corpus: `python -m llava_ov15.demo [--out demo-out]`.

Runs the whole toolchain on CPU in a few minutes, each step through its public command line:

1. corpus   — real photographs (scikit-image samples) re-cut into a small JSONL corpus in all
              three sample shapes (caption, LLaVA conversations, messages);
2. build    — `llava-pack build`: probe, hash, dedup, WebDataset shards;
3. pack     — `llava-pack pack`: token lengths with the real Qwen tokenizer (built offline),
              best-fit-decreasing packing into fixed-length sequences;
4. train    — `python -m llava_ov15.train`: a tiny stage-1 (adapter-only) run under
              megatron-core on the packed shards;
5. convert  — `python -m llava_ov15.convert mcore-to-hf`: the trained checkpoint as an HF dir;
6. eval     — `python -m llava_ov15.eval` on small synthetic benchmark files, with the report.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from llava_ov15.demo.corpus import CorpusSpec, write_corpus

REPO = Path(__file__).resolve().parents[3]


def step(title: str, *args: str) -> None:
    print(f"\n== {title}: {' '.join(args)}", flush=True)
    t0 = time.monotonic()
    # Third-party import-time warnings (no TransformerEngine/Apex on CPU, deprecations) would
    # bury the demo's own output.
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run([sys.executable, *args], check=True, env=env)
    print(f"== {title} done in {time.monotonic() - t0:.1f}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="demo-out", help="working directory (recreated)")
    ap.add_argument("-n", type=int, default=300, help="samples in the demo corpus")
    ap.add_argument("--steps", type=int, default=12, help="training steps")
    ap.add_argument("--only-build", action="store_true", help="stop after llava-pack build")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    spec = CorpusSpec(n=args.n, seed=0, max_side=1024, multi_image_fraction=0.05,
                      text_only_fraction=0.03, shapes=("caption", "conversations", "messages"))
    print(f"== corpus: {spec.n} samples of real photos under {out / 'corpus'}", flush=True)
    corpus = write_corpus(out / "corpus", spec)

    pack_cli = ["-m", "llava_ov15.cli.pack"]
    step("build", *pack_cli, "build", "--input", str(corpus), "--output", str(out / "shards"),
         "--shard-size", "16MB", "--progress", "log")
    if args.only_build:
        return 0

    from llava_ov15.data.tokenizer import qwen_tokenizer_json

    tokenizer = str(qwen_tokenizer_json())
    step("pack", *pack_cli, "pack", "--input", str(out / "shards"), "--output",
         str(out / "packed"), "--tokenizer", tokenizer, "--max-len", "2048", "--progress", "log")
    stats = json.loads((out / "packed" / "pack_stats.json").read_text())
    print(f"   {stats.get('packs')} packs, fill efficiency {stats.get('fill_efficiency')}")

    ckpt = out / "train" / "checkpoints"
    # the pack brings its tokenizer, row length, pixel limits and caption format
    overrides = [
        f"data.path={out / 'packed'}",
        f"train.steps={args.steps}", "train.lr=1e-2", f"log.dir={out / 'train'}",
        f"checkpoint.dir={ckpt}", "log.progress=log",
    ]
    step("train", "-m", "llava_ov15.train", "--config",
         str(REPO / "configs/tiny/stage1_alignment.yaml"),
         *[arg for kv in overrides for arg in ("--set", kv)])
    lines = (out / "train" / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    losses = [m["loss"] for m in metrics if "loss" in m]
    print(f"   loss {losses[0]:.3f} → {losses[-1]:.3f} over {len(losses)} steps")

    model_dir = out / "model"
    # The run's checkpoint directory: convert follows its `latest` and takes the tokenizer that
    # training saved there, so the HF directory comes out complete.
    step("convert", "-m", "llava_ov15.convert", "mcore-to-hf", "--mcore", str(ckpt),
         "--out", str(model_dir))

    from llava_ov15.eval.testing import write_synthetic_benchmarks

    write_synthetic_benchmarks(out / "benchmarks")
    step("eval", "-m", "llava_ov15.eval", "--model", str(model_dir), "--benchmarks",
         "mme,pope,vqav2_val", "--data-dir", str(out / "benchmarks"), "--output",
         str(out / "eval"), "--limit", "4", "--device", "cpu", "--no-progress",
         "--note", f"Demo model: a tiny network trained for {args.steps} steps (stage 1, "
         f"adapter only) on {args.n} samples, evaluated on 4 synthetic questions per benchmark "
         "with random images. Scores near 0 are expected: this shows that the pipeline runs "
         "end to end, not what the architecture can do.")
    print(f"\n== done: shards {out / 'shards'}, packs {out / 'packed'}, model {model_dir}, "
          f"report {out / 'eval' / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
