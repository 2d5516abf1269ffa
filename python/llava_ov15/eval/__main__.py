"""``python -m llava_ov15.eval --model DIR --benchmarks mme,... --data-dir DATA --output OUT``."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

from .benchmarks import REGISTRY, get
from .data import DataError
from .predictor import describe, load_predictor
from .provenance import model_fingerprint, versions
from .published import published_for
from .report import write_report, write_results
from .runner import ResumeError, run_benchmark


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llava_ov15.eval",
        description="Evaluate a checkpoint on local copies of standard benchmarks "
                    "(lmms-eval llava_onevision1_5 prompts, official scoring).")
    p.add_argument("--model", help="checkpoint directory (or dummy:echo|hash|yes, test only); "
                   "optional with --rescore")
    p.add_argument("--benchmarks", help="comma-separated names (see --list)")
    p.add_argument("--data-dir", type=Path, help="folder holding the benchmark folders")
    p.add_argument("--output", type=Path, help="output folder (predictions, results, report)")
    p.add_argument("--limit", type=int, default=None, help="first N samples per benchmark")
    p.add_argument("--rescore", action="store_true",
                   help="recompute scores from saved predictions, no model")
    p.add_argument("--overwrite", action="store_true", help="discard saved predictions")
    p.add_argument("--samples", type=int, default=6, help="predictions shown per benchmark")
    p.add_argument("--device", default=None, help="passed to the model loader")
    p.add_argument("--dtype", default=None, help="passed to the model loader")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--list", action="store_true", help="list benchmarks and exit")
    return p


def _list() -> None:
    for name, b in sorted(REGISTRY.items()):
        where = ", ".join(f"{b.folder}/{x}" for x in b.patterns[:1]) or f"{b.folder}/..."
        print(f"{name:18s} {b.title:24s} {b.hf_repo:28s} {where}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        _list()
        return 0
    missing = [o for o in ("benchmarks", "data_dir", "output") if getattr(args, o) is None]
    if not args.rescore and args.model is None:
        missing.append("model")
    if missing:
        print(f"error: missing --{', --'.join(m.replace('_', '-') for m in missing)}",
              file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print("error: --limit must be >= 1", file=sys.stderr)
        return 2
    try:
        specs = {n: get(n) for n in (x.strip() for x in args.benchmarks.split(",")) if n}
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    try:
        tables = {n: b.load(args.data_dir) for n, b in specs.items()}
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    predictor = None
    if args.rescore:
        model = _model_from_meta(out, specs) if args.model is None else model_fingerprint(
            args.model)
    else:
        model = model_fingerprint(args.model)
        predictor = load_predictor(args.model, device=args.device, dtype=args.dtype)
        model["predictor"] = describe(predictor)
    model_id = f"{model['spec']}#{model['fingerprint']}"

    entries = {}
    try:
        for name, b in specs.items():
            e = run_benchmark(b, tables[name], out, predictor=predictor, model_id=model_id,
                              limit=args.limit, rescore=args.rescore,
                              overwrite=args.overwrite, progress=not args.no_progress)
            e["published"] = published_for(name)
            entries[name] = e
    except KeyboardInterrupt:
        print("\ninterrupted: predictions so far are saved; rerun the same command to resume",
              file=sys.stderr)
        return 130
    except (DataError, ResumeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    results = {
        "schema": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": {"model": args.model, "benchmarks": list(specs), "data_dir": str(args.data_dir),
                   "output": str(out), "limit": args.limit, "rescore": args.rescore,
                   "batch_size": 1, "greedy": True,
                   "prompts": "lmms-eval llava_onevision1_5 / default task settings"},
        "model": model,
        "versions": versions(with_java="coco2017_cap_val" in specs),
        "benchmarks": entries,
    }
    write_results(out / "results.json", results)
    write_report(out / "report.html", results, specs, tables, args.samples)
    for name, e in entries.items():
        h = e.get("headline")
        shown = f"{h['metric']} = {h['value']:.2f}" if h else f"submission: {e.get('submission')}"
        print(f"{name:18s} n={e['n_samples']:<7d} {shown}")
    print(f"wrote {out / 'results.json'} and {out / 'report.html'}")
    return 0


def _model_from_meta(out: Path, specs: dict) -> dict:
    for name in specs:
        meta = out / "predictions" / f"{name}.meta.json"
        if meta.exists():
            spec, _, fp = json.loads(meta.read_text())["model"].rpartition("#")
            return {"spec": spec, "fingerprint": fp, "method": "from saved predictions"}
    return {"spec": None, "fingerprint": None, "method": "unknown"}


if __name__ == "__main__":
    sys.exit(main())
