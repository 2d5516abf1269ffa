"""`python -m llava_ov15.serve --model DIR [--port 8000] [--ui]`: OpenAI-compatible server.

    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32}'

Images are sent inline as data: URIs; local files only under an --image-root directory; network
URLs are refused. --ui also serves a web demo at http://HOST:PORT/ . A bad model directory or
option ends with a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m llava_ov15.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory (HF layout)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None,
                   help="the model id clients see (default: the directory name)")
    p.add_argument("--image-root", action="append", default=[], metavar="DIR",
                   help="allow image_url paths / file:// URLs under DIR (repeatable)")
    p.add_argument("--ui", action="store_true", help="serve the web demo at /")
    p.add_argument("--max-batch", type=int, default=8, help="requests per generate step")
    p.add_argument("--gather-ms", type=float, default=10.0,
                   help="how long the worker waits for more requests to fill a batch")
    p.add_argument("--max-tokens-limit", type=int, default=2048,
                   help="largest max_tokens a request may ask for (also the default)")
    p.add_argument("--max-images", type=int, default=8, help="images per request")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests accepted at once (waiting + running); more get 503")
    p.add_argument("--min-pixels", type=int, default=None)
    p.add_argument("--max-pixels", type=int, default=None)
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    return p.parse_args(argv)


def main(argv=None) -> int:
    from ..infer import UsageError

    args = parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from ..infer import UsageError, check_model_dir
    from . import require_serve_deps

    try:
        require_serve_deps()
    except ImportError as e:
        raise UsageError(str(e)) from None
    for name in ("max_batch", "max_tokens_limit", "max_queue"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_images < 0 or args.gather_ms < 0:
        raise UsageError("--max-images and --gather-ms cannot be negative")
    model_dir = check_model_dir(args.model)
    roots = []
    for r in args.image_root:
        if not Path(r).is_dir():
            raise UsageError(f"--image-root {r}: no such directory")
        roots.append(Path(r).resolve())

    import uvicorn

    from ..model.checkpoint import CheckpointError
    from ..model.pipeline import load_pipeline
    from ..model.processor import MAX_PIXELS, MIN_PIXELS
    from .app import ServeConfig, create_app

    try:
        pipe = load_pipeline(model_dir, device=args.device, dtype=args.dtype,
                             min_pixels=args.min_pixels or MIN_PIXELS,
                             max_pixels=args.max_pixels or MAX_PIXELS)
    except (CheckpointError, OSError, ValueError) as e:
        raise UsageError(f"--model {model_dir}: {e}") from None
    cfg = ServeConfig(model_name=args.served_model_name or model_dir.resolve().name,
                      image_roots=tuple(roots), ui=args.ui, max_batch=args.max_batch,
                      max_tokens_limit=args.max_tokens_limit, max_images=args.max_images,
                      gather_ms=args.gather_ms, max_queue=args.max_queue)
    app = create_app(pipe, cfg)
    where = f"http://{args.host}:{args.port}"
    print(f"[serving {cfg.model_name} on {where}/v1/chat/completions"
          + (f"; web demo at {where}/" if args.ui else "") + "]", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
