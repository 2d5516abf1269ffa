"""`python -m llava_ov15.train --config X.yaml [--set key=value ...] [--resume]` (or torchrun)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llava_ov15.train", description=__doc__)
    ap.add_argument("--config", help="YAML recipe (configs/...)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set train.lr=1e-5 (repeatable)")
    ap.add_argument("--resume", action="store_true",
                    help="continue from the latest checkpoint in checkpoint.dir")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config")
    args = ap.parse_args(argv)
    from .config import ConfigError, load_config

    overrides = list(args.set) + (["checkpoint.resume=true"] if args.resume else [])
    try:
        cfg = load_config(args.config, overrides)
    except (ConfigError, OSError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    from .trainer import train

    try:
        train(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # required: dist_checkpointing spawns worker processes
    sys.exit(main())
