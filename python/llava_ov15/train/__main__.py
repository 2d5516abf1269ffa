"""`python -m llava_ov15.train --config X.yaml [--set key=value ...] [--resume | --overwrite]`
(or under torchrun).

Train on your own `llava-pack pack` output with a recipe's settings:
`--set data.path=packed/` (the tokenizer, row length, pixel limits and caption format come from
the pack's manifest). Ctrl-C / SIGTERM stop after the current step and save a checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def _say(msg: str) -> None:
    if _rank() == 0:
        print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llava_ov15.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML recipe (configs/...)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set train.lr=1e-5 (repeatable)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue from the latest checkpoint in checkpoint.dir (starts fresh "
                           "when there is none yet)")
    mode.add_argument("--overwrite", action="store_true",
                      help="start over although checkpoint.dir / log.dir hold a previous run "
                           "(its checkpoints are deleted)")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config")
    args = ap.parse_args(argv)
    from .config import ConfigError, load_config

    overrides = list(args.set) + (["checkpoint.resume=true"] if args.resume else []) + (
        ["checkpoint.overwrite=true", "checkpoint.resume=false"] if args.overwrite else [])
    try:
        cfg = load_config(args.config, overrides)
    except (ConfigError, OSError) as e:
        _say(f"config error: {e}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    try:
        from .trainer import train

        train(cfg)
    except ConfigError as e:
        _say(f"config error: {e}")
        return 2
    except OSError as e:  # a missing or unreadable file or folder: one line, not a traceback
        _say(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        _say("[train] aborted by Ctrl-C: the step in progress was not saved")
        return 130
    finally:
        _shutdown()
    return 0


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":  # required: dist_checkpointing spawns worker processes
    sys.exit(main())
