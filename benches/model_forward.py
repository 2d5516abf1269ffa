"""Forward+backward throughput and peak memory of our Qwen3 vs transformers' Qwen3 (CPU).

Each variant runs in its own subprocess (so peak RSS is per variant) with the same config,
weights, batch and thread count:

  ours         llava_ov15.model.qwen3.Qwen3ForCausalLM, one sequence per row
  ours-packed  same weights, each row packed with 4 sub-samples (block-diagonal causal mask)
  hf           transformers.Qwen3ForCausalLM (sdpa attention)

"peak RSS" is the whole process (the hf variant also pays for importing transformers);
"step peak" is the growth above the post-build RSS during the timed steps (activations + grads).
The machine may be shared: variants are interleaved over rounds and the best round is reported.

Loss = mean token cross entropy on the logits, identical for all. Usage:

  PYTHONPATH=python python benches/model_forward.py [--seq 512 --batch 2 --iters 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def build(args):
    from llava_ov15.model.config import TextConfig
    from llava_ov15.model.qwen3 import Qwen3ForCausalLM

    cfg = TextConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                     num_heads=args.heads, num_kv_heads=args.kv_heads,
                     head_dim=args.hidden // args.heads, intermediate_size=3 * args.hidden,
                     rope_theta=1e6, max_position_embeddings=args.seq)
    torch.manual_seed(0)
    ours = Qwen3ForCausalLM(cfg)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.02)
    return cfg, ours


def run_one(args) -> dict:
    torch.set_num_threads(args.threads)
    cfg, ours = build(args)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=g)
    segments = None
    if args.variant == "hf":
        from llava_ov15.model.testing import hf_qwen3

        model = hf_qwen3(cfg, ours.state_dict())
        del ours

        def fwd():
            return model(input_ids=ids).logits
    else:
        model = ours
        if args.variant == "ours-packed":
            from llava_ov15.model.attention import Segments

            n = args.seq // 4
            pos = torch.arange(args.seq).remainder(n).expand(args.batch, -1)
            segments = Segments.from_position_ids(pos)
        else:
            pos = None

        def fwd():
            return model(ids, pos, segments)
    model.train()
    # Peak memory of the training steps alone (activations, grads), independent of imports:
    # reset the kernel's high-water mark to the current RSS, read it back at the end.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    rss0 = _status_bytes("VmRSS")
    times = []
    for i in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        logits = fwd()
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, cfg.vocab_size).float(),
                               ids[:, 1:].reshape(-1))
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    return {"variant": args.variant, "tokens_per_s": args.batch * args.seq / med,
            "median_s": med, "loss": loss.item(),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "step_peak_mib": (_status_bytes("VmHWM") - rss0) / 2**20}


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=2, help="alternate variants this many times")
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_one(args)))
        return
    base = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
            if k not in ("variant", "rounds")]
    results: dict[str, list[dict]] = {}
    for _ in range(args.rounds):  # interleave to be fair on a shared, noisy machine
        for v in ("hf", "ours", "ours-packed"):
            out = subprocess.run([sys.executable, __file__, *base, "--variant", v],
                                 capture_output=True, text=True, check=True)
            results.setdefault(v, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {v: max(r, key=lambda x: x["tokens_per_s"]) for v, r in results.items()}
    print(f"config: hidden {args.hidden}, layers {args.layers}, heads {args.heads}/"
          f"{args.kv_heads}, vocab {args.vocab}, batch {args.batch}x{args.seq}, "
          f"threads {args.threads}, torch {torch.__version__}")
    print(f"{'variant':<12} {'tok/s (best of rounds)':>22} {'median step s':>14} "
          f"{'peak RSS MiB':>13} {'step peak MiB':>14} {'loss':>8}")
    for v, r in best.items():
        print(f"{v:<12} {r['tokens_per_s']:>22.0f} {r['median_s']:>14.3f} "
              f"{r['peak_rss_mib']:>13.0f} {r['step_peak_mib']:>14.0f} {r['loss']:>8.4f}")
    ratio = best["ours"]["tokens_per_s"] / best["hf"]["tokens_per_s"]
    print(f"ours / transformers throughput: {ratio:.2f}x "
          f"(all rounds: {[round(x['tokens_per_s']) for x in results['ours']]} vs "
          f"{[round(x['tokens_per_s']) for x in results['hf']]})")


if __name__ == "__main__":
    main()
