"""Command-line inference: `python -m llava_ov15.infer --model DIR --image a.jpg --prompt "..."`.

DIR is an HF-layout directory (config.json, *.safetensors, tokenizer.json), e.g. a download of
lmms-lab/LLaVA-OneVision-1.5-8B-Instruct or a directory written by `save_pretrained`.
The answer is streamed to stdout as it is generated. A missing or damaged model directory or
image file ends with a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


class TextStreamer:
    """Prints the decoded suffix of one row as tokens arrive (holds back split UTF-8)."""

    def __init__(self, decode, out=sys.stdout):
        self.decode, self.out = decode, out
        self.ids: list[int] = []
        self.printed = 0

    def __call__(self, row: int, token: int) -> None:
        self.ids.append(token)
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):  # incomplete multi-byte character
            return
        self.out.write(text[self.printed:])
        self.out.flush()
        self.printed = len(text)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m llava_ov15.infer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory (HF layout)")
    p.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--system", default=None, help="system prompt (default: Qwen2.5-VL's)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--min-pixels", type=int, default=None)
    p.add_argument("--max-pixels", type=int, default=None)
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto",
                   help="auto: the checkpoint's dtype")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--no-cache", action="store_true", help="disable the KV cache (debugging)")
    return p.parse_args(argv)


class UsageError(Exception):
    """Bad input from the command line: reported as one line, exit status 2."""


def check_model_dir(path: str) -> Path:
    """Fail before the (slow) model load when the directory cannot be a model."""
    d = Path(path)
    if not d.is_dir():
        raise UsageError(f"--model {d}: no such directory" if not d.exists()
                         else f"--model {d}: not a directory")
    if not (d / "config.json").is_file():
        raise UsageError(f"--model {d}: not an HF model directory (no config.json); convert a "
                         "training checkpoint with `python -m llava_ov15.convert mcore-to-hf`")
    if not (d / "tokenizer.json").is_file():
        raise UsageError(f"--model {d}: no tokenizer.json (re-run `python -m llava_ov15.convert "
                         "mcore-to-hf`, which writes it)")
    return d


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    model_dir = check_model_dir(args.model)
    from .model.checkpoint import CheckpointError
    from .model.pipeline import ImageLoadError, load_image, load_pipeline
    from .model.processor import MAX_PIXELS, MIN_PIXELS

    try:  # decode the images first: a bad file should not cost a model load
        images = [load_image(f) for f in args.image]
    except ImageLoadError as e:
        raise UsageError(f"--image {e}") from None
    t0 = time.perf_counter()
    try:
        pipe = load_pipeline(model_dir, device=args.device, dtype=args.dtype,
                             min_pixels=args.min_pixels or MIN_PIXELS,
                             max_pixels=args.max_pixels or MAX_PIXELS)
    except (CheckpointError, OSError, ValueError) as e:  # incl. bad JSON, missing weights
        raise UsageError(f"--model {model_dir}: {e}") from None
    content = [{"type": "image", "image": im} for im in images]
    msgs = [{"role": "user", "content": [*content, {"type": "text", "text": args.prompt}]}]
    if args.system is not None:
        msgs.insert(0, {"role": "system", "content": args.system})
    try:
        enc = pipe.encode(msgs)
    except ValueError as e:  # e.g. an aspect ratio over 200
        raise UsageError(f"--image: {e}") from None
    print(f"[loaded in {time.perf_counter() - t0:.1f}s; prompt {len(enc['input_ids'])} tokens]",
          file=sys.stderr)
    cfg = pipe.generation_config(
        max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
        temperature=args.temperature or 1.0, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
        stop_strings=args.stop, use_cache=not args.no_cache,
    )
    streamer = TextStreamer(pipe.processor.decode)
    t1 = time.perf_counter()
    out = pipe.run(enc, cfg, stream=streamer)
    dt = time.perf_counter() - t1
    print(flush=True)
    n = len(out.sequences[0])
    print(f"[{n} tokens in {dt:.2f}s, {n / max(dt, 1e-9):.1f} tok/s, "
          f"finish: {out.finish_reasons[0]}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
