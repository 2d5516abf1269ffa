"""Peak memory and time of the output layer + cross entropy: full logits vs the fused chunked
loss (`train.loss_chunk_tokens`), forward + backward, on CPU.

Each variant runs in a fresh process (tensor-parallel size 1, megatron's CPU adaptation) on the
same hidden states [tokens, hidden], output weight [vocab, hidden] and targets; the figure is
the growth of the process's peak RSS (VmHWM) over the same process's RSS just before the loss
(inputs, weight and their gradient buffers are allocated up front, so both variants pay the
same for them and the difference is the logits and what the loss keeps). glibc is told to
serve large blocks by mmap (MALLOC_MMAP_THRESHOLD_) so freed logits leave RSS at once.

  PYTHONPATH=python python benches/loss_memory.py [--tokens 8192] [--hidden 512]
      [--vocab 32768] [--chunk 1024] [--bf16]

The loss and gradients of the two variants are compared too (max |difference|).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _vm_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def child(tokens: int, hidden: int, vocab: int, chunk: int, bf16: int) -> None:
    import torch
    from megatron.core import tensor_parallel

    from llava_ov15.train import trainer
    from llava_ov15.train.chunked_ce import chunked_vocab_parallel_cross_entropy

    trainer.init_parallel(1, 1)
    g = torch.Generator().manual_seed(0)
    dt = torch.bfloat16 if bf16 else torch.float32
    h = torch.randn(tokens, hidden, generator=g).to(dt).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=g) * 0.02).to(dt).requires_grad_()
    tgt = torch.randint(0, vocab, (tokens,), generator=g)
    h.grad, w.grad = torch.zeros_like(h), torch.zeros_like(w)  # both variants need these
    base = _vm_kb("VmRSS")
    t0 = time.perf_counter()
    if chunk > 0:
        loss = chunked_vocab_parallel_cross_entropy(h, w, tgt, chunk)
    else:  # what megatron_model does with loss_chunk_tokens=0
        logits = (h @ w.t())[:, None]  # [S, B=1, V]
        loss = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), tgt[:, None])[:, 0]
        del logits
    loss.sum().backward()
    dt = time.perf_counter() - t0
    peak = _vm_kb("VmHWM")
    print("RESULT " + json.dumps({
        "peak_growth_mb": (peak - base) / 1024, "seconds": dt, "loss": loss.detach().tolist(),
        "grad_h_sum": float(h.grad.abs().sum()), "grad_w_sum": float(w.grad.abs().sum()),
        "grad_h_0": h.grad[0].float().tolist()}), flush=True)


def run(tokens: int, hidden: int, vocab: int, chunk: int, bf16: bool) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MALLOC_MMAP_THRESHOLD_": "131072",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "python")}
    p = subprocess.run([sys.executable, __file__, "--child", str(tokens), str(hidden),
                        str(vocab), str(chunk), str(int(bf16))], capture_output=True,
                       text=True, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not lines:
        raise SystemExit(f"variant chunk={chunk} failed:\n{p.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*map(int, sys.argv[2:7]))
        return
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--bf16", action="store_true", help="bf16 hidden states and weight, as in "
                    "training (the full path then also holds a bf16 copy of the logits)")
    a = ap.parse_args()
    full = run(a.tokens, a.hidden, a.vocab, 0, a.bf16)
    fused = run(a.tokens, a.hidden, a.vocab, a.chunk, a.bf16)
    logits_mb = a.tokens * a.vocab * 4 / 2**20
    print(f"{a.tokens} tokens × hidden {a.hidden} × vocab {a.vocab}, "
          f"{'bf16' if a.bf16 else 'fp32'} (fp32 logits {logits_mb:.0f} MB), forward + backward:")
    print(f"  full logits      peak +{full['peak_growth_mb']:7.0f} MB  {full['seconds']:.2f} s")
    print(f"  chunked ({a.chunk:>5}) peak +{fused['peak_growth_mb']:7.0f} MB  "
          f"{fused['seconds']:.2f} s")
    print(f"  memory ratio full/chunked {full['peak_growth_mb'] / fused['peak_growth_mb']:.1f}x, "
          f"time ratio chunked/full {fused['seconds'] / full['seconds']:.2f}x")
    dl = max(abs(x - y) for x, y in zip(full["loss"], fused["loss"], strict=True))
    dg = max(abs(x - y) for x, y in zip(full["grad_h_0"], fused["grad_h_0"], strict=True))
    print(f"  max |loss diff| {dl:.2e}, grad sums {full['grad_h_sum']:.6g} vs "
          f"{fused['grad_h_sum']:.6g} (h), {full['grad_w_sum']:.6g} vs {fused['grad_w_sum']:.6g}"
          f" (w), max |grad_h[0] diff| {dg:.2e}")


if __name__ == "__main__":
    main()
