"""Load on the OpenAI-compatible server: batched vs one-at-a-time, in the same run.

For each mode a real server (`python -m llava_ov15.serve`, its own process) is started on a
free loopback port with the same model, and N chat requests (each with a small image as a data:
URI) are sent by C concurrent clients. Reported per mode: requests/s, p50/p99 latency, generated
tokens/s, failed requests, mean batch size (from /health); then the batched/one-at-a-time
ratios. The request count and a wall-clock limit bound the run; every server is stopped.

  PYTHONPATH=python python benches/serve_load.py [--requests 32 --concurrency 8
      --max-tokens 16 --max-batch 8 --model DIR --time-limit 300 --threads 1]

Without --model a tiny random model is written to a temporary directory (CPU-sized); greedy
answers of a random model run to --max-tokens or stop early at an end token, the same in both
modes since a request's greedy answer does not depend on its batch.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_uri(seed: int) -> str:
    from PIL import Image

    rgb = np.random.default_rng(seed).integers(0, 255, (56, 84, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def start_server(model: Path, max_batch: int, args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "llava_ov15.serve", "--model", str(model), "--port", str(port),
           "--max-batch", str(max_batch), "--log-level", "warning",
           "--max-tokens-limit", str(max(args.max_tokens, 1))]
    if args.device:
        cmd += ["--device", args.device]
    # Few intra-op threads: on a shared machine torch's spinning worker threads wait on each
    # other when one is descheduled, which swamps a tiny model's per-step cost.
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)
    base = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {proc.stderr.read()}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError("server did not come up within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def load(base: str, args, deadline: float) -> dict:
    import httpx

    images = [image_uri(i) for i in range(4)]
    questions = ["what is this", "describe the picture", "what is in the picture", "describe"]
    lat: list[float] = []
    tokens, failed, skipped = 0, 0, 0
    lock = threading.Lock()

    def one(i: int, client: httpx.Client) -> None:
        nonlocal tokens, failed, skipped
        if time.monotonic() > deadline:
            with lock:
                skipped += 1
            return
        body = {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": images[i % len(images)]}},
            {"type": "text", "text": questions[i % len(questions)]}]}],
            "max_tokens": args.max_tokens}
        t = time.perf_counter()
        try:
            r = client.post("/v1/chat/completions", json=body,
                            timeout=max(deadline - time.monotonic(), 1))
            ok = r.status_code == 200
            n = r.json()["usage"]["completion_tokens"] if ok else 0
        except (httpx.HTTPError, ValueError, KeyError):
            ok, n = False, 0
        dt = time.perf_counter() - t
        with lock:
            if ok:
                lat.append(dt)
                tokens += n
            else:
                failed += 1

    with httpx.Client(base_url=base) as client:
        one(0, client)  # warm-up (first-call allocations), not counted
        lat.clear()
        tokens = 0
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(lambda i: one(i, client), range(args.requests)))
        wall = time.perf_counter() - t0
        stats = client.get("/health").json()
    lat.sort()
    pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else (lambda q: 0.0)
    return {"ok": len(lat), "failed": failed, "not_sent": skipped, "wall_s": wall,
            "req_s": len(lat) / wall, "p50_s": pick(0.5), "p99_s": pick(0.99),
            "tok_s": tokens / wall, "tokens": tokens,
            "mean_batch": stats["rows"] / max(stats["batches"], 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="default: a tiny random model")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=8, help="batch size of the batched mode")
    p.add_argument("--time-limit", type=float, default=300, help="seconds for the whole run")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of each server")
    args = p.parse_args(argv)
    if min(args.requests, args.concurrency, args.max_tokens, args.max_batch) < 1:
        p.error("--requests, --concurrency, --max-tokens and --max-batch must be at least 1")
    deadline = time.monotonic() + args.time_limit
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from llava_ov15.model.testing import save_tiny_checkpoint

            model = save_tiny_checkpoint(Path(tmp) / "tiny", words=["what", "is", "this",
                                                                    "describe", "picture"])
        results = {}
        for name, mb in (("batched", args.max_batch), ("one-at-a-time", 1)):
            proc, base = start_server(model, mb, args)
            try:
                # each mode gets at most half of the time left when it starts
                results[name] = load(base, args, time.monotonic()
                                     + (deadline - time.monotonic()) / (2 if not results else 1))
            finally:
                stop_server(proc)
    print(f"{args.requests} requests, {args.concurrency} concurrent clients, max_tokens "
          f"{args.max_tokens}, model {args.model or 'tiny (random)'}, "
          f"{args.threads} torch thread(s) per server, {os.cpu_count()} CPUs")
    print(f"{'mode':<14} {'max_batch':>9} {'ok':>4} {'failed':>6} {'req/s':>7} {'p50 s':>7} "
          f"{'p99 s':>7} {'tok/s':>8} {'mean batch':>10}")
    for name, r in results.items():
        mb = args.max_batch if name == "batched" else 1
        print(f"{name:<14} {mb:>9} {r['ok']:>4} {r['failed'] + r['not_sent']:>6} "
              f"{r['req_s']:>7.2f} {r['p50_s']:>7.3f} {r['p99_s']:>7.3f} {r['tok_s']:>8.1f} "
              f"{r['mean_batch']:>10.2f}")
    b, s = results["batched"], results["one-at-a-time"]
    print(f"batched / one-at-a-time: requests/s x{b['req_s'] / max(s['req_s'], 1e-9):.2f}, "
          f"tokens/s x{b['tok_s'] / max(s['tok_s'], 1e-9):.2f}, "
          f"p50 latency x{b['p50_s'] / max(s['p50_s'], 1e-9):.2f}")
    failed = sum(r["failed"] + r["not_sent"] for r in results.values())
    print("all requests succeeded" if not failed else f"{failed} requests failed or not sent")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
