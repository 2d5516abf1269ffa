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
from .provenance import auto_notes, model_fingerprint, versions
from .published import published_for
from .report import attach_saved_samples, write_report, write_results
from .runner import ResumeError, run_benchmark
from .scoring.coco import DEFAULT_TIMEOUT_S, CocoScoringError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llava_ov15.eval",
        description="Evaluate a checkpoint on local copies of standard benchmarks "
                    "(lmms-eval llava_onevision1_5 prompts, official scoring).")
    p.add_argument("--model", help="checkpoint directory (or dummy:echo|hash|yes, test only); "
                   "optional with --rescore")
    p.add_argument("--benchmarks", help="comma-separated names (see --list), or 'all'")
    p.add_argument("--data-dir", type=Path, help="folder holding the benchmark folders")
    p.add_argument("--output", type=Path, help="output folder (predictions, results, report)")
    p.add_argument("--limit", type=int, default=None, help="first N samples per benchmark")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="generation limit for every benchmark instead of each task's own "
                        "(e.g. MMBench-en: 1024); recorded in results.json")
    p.add_argument("--rescore", action="store_true",
                   help="recompute scores from saved predictions, no model")
    p.add_argument("--overwrite", action="store_true", help="discard saved predictions")
    p.add_argument("--samples", type=int, default=6, help="predictions shown per benchmark")
    p.add_argument("--note", action="append", default=[], metavar="TEXT",
                   help="a note shown at the top of the report and kept in results.json "
                        "(repeatable), e.g. why the scores are what they are")
    p.add_argument("--scorer-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help="seconds the external (Java) COCO scorers may take "
                        f"(default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--device", default=None, help="passed to the model loader")
    p.add_argument("--dtype", default=None, help="passed to the model loader")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--list", action="store_true", help="list benchmarks and exit")
    return p


def _list() -> None:
    for name, b in sorted(REGISTRY.items()):
        where = ", ".join(f"{b.folder}/{x}" for x in b.patterns[:1]) or f"{b.folder}/..."
        print(f"{name:18s} {b.title:24s} {b.hf_repo:28s} {where}")


def parse_benchmarks(text: str) -> list[str]:
    """Names in the given order, duplicates dropped; ``all`` expands to every benchmark."""
    names: list[str] = []
    for n in (x.strip() for x in text.split(",")):
        for m in (sorted(REGISTRY) if n == "all" else [n] if n else []):
            get(m)  # KeyError naming the known benchmarks
            if m not in names:
                names.append(m)
    if not names:
        raise KeyError("no benchmark named; see --list (or use 'all')")
    return names


def _usage_error(args) -> str | None:
    missing = [o for o in ("benchmarks", "data_dir", "output") if getattr(args, o) is None]
    if not args.rescore and args.model is None:
        missing.append("model")
    if missing:
        return f"missing --{', --'.join(m.replace('_', '-') for m in missing)}"
    if args.limit is not None and args.limit < 1:
        return "--limit must be >= 1"
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        return "--max-new-tokens must be >= 1"
    if args.max_new_tokens is not None and args.rescore:
        return ("--max-new-tokens has no effect with --rescore (scores come from saved "
                "predictions); rerun without --rescore, with --overwrite or another --output")
    if not args.scorer_timeout > 0:
        return "--scorer-timeout must be > 0"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        _list()
        return 0
    problem = _usage_error(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        specs = {n: get(n) for n in parse_benchmarks(args.benchmarks)}
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    tables, problems = {}, []
    for n, b in specs.items():   # every missing benchmark at once, not one per attempt
        try:
            tables[n] = b.load(args.data_dir)
        except DataError as e:
            problems.append(f"{n}: {e}")
    if problems:
        print("error: " + "\nerror: ".join(problems), file=sys.stderr)
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
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    entries = {}
    try:
        for name, b in specs.items():
            e = run_benchmark(b, tables[name], out, predictor=predictor, model_id=model_id,
                              limit=args.limit, rescore=args.rescore,
                              overwrite=args.overwrite, progress=not args.no_progress,
                              max_new_tokens=args.max_new_tokens,
                              scorer_timeout_s=args.scorer_timeout)
            e["published"] = published_for(name)
            e["scored"] = {"created": created, "rescore": args.rescore}
            entries[name] = e
    except KeyboardInterrupt:
        print("\ninterrupted: predictions so far are saved; rerun the same command to resume",
              file=sys.stderr)
        return 130
    except (DataError, ResumeError, CocoScoringError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    results = {
        "schema": 1,
        "created": created,
        "config": {"model": args.model, "benchmarks": list(specs), "data_dir": str(args.data_dir),
                   "output": str(out), "limit": args.limit, "rescore": args.rescore,
                   "max_new_tokens": args.max_new_tokens,
                   "max_new_tokens_source": "task defaults" if args.max_new_tokens is None
                   else "--max-new-tokens (all benchmarks)",
                   "scorer_timeout_s": args.scorer_timeout,
                   "batch_size": 1, "greedy": True,
                   "prompts": "lmms-eval llava_onevision1_5 / default task settings"},
        "model": model,
        "notes": list(dict.fromkeys([*args.note, *auto_notes(model)])),
        "versions": versions(with_java="coco2017_cap_val" in specs),
        "benchmarks": entries,
    }
    kept = merge_previous(out / "results.json", results)
    for name in kept:   # examples (and thumbnails) for benchmarks kept from an earlier run
        table = _try_load(get(name), args.data_dir)
        if table is not None:
            tables[name] = table
        attach_saved_samples(results["benchmarks"][name], out, table)
    all_specs = {n: get(n) for n in results["benchmarks"]}
    write_results(out / "results.json", results)
    write_report(out / "report.html", results, all_specs, tables, args.samples)
    for name, e in results["benchmarks"].items():
        h = e.get("headline")
        shown = f"{h['metric']} = {h['value']:.2f}" if h else f"submission: {e.get('submission')}"
        was = "  (kept from an earlier run)" if name in kept else ""
        print(f"{name:18s} n={e['n_samples']:<7d} {shown}{was}")
    for note in results["notes"]:
        print(f"note: {note}")
    print(f"wrote {out / 'results.json'} and {out / 'report.html'}")
    return 0


def merge_previous(path: Path, results: dict) -> list[str]:
    """Keep the benchmarks of an earlier results.json in ``path`` that this run did not redo,
    so that rescoring (or running) one benchmark does not drop the others. Only results of
    the same model (fingerprint) are kept; returns the names kept."""
    if not path.exists():
        return []
    try:
        old = json.loads(path.read_text())
        old_bench = old["benchmarks"]
        old_model = old.get("model") or {}
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"warning: {path} is unreadable ({e}); writing a new one", file=sys.stderr)
        return []
    new_model = results["model"]
    if old_model.get("fingerprint") != new_model.get("fingerprint"):
        print(f"warning: {path} held results of another model ({old_model.get('spec')}#"
              f"{old_model.get('fingerprint')}); they are replaced", file=sys.stderr)
        return []
    if results["config"]["rescore"] and new_model.get("method") == "from saved predictions":
        results["model"] = old_model          # same model, with its richer first record
    current = results["benchmarks"]
    merged = {}
    for name, e in old_bench.items():
        if name in REGISTRY and isinstance(e, dict):
            merged[name] = current.get(name, e)
    merged.update(current)
    results["benchmarks"] = merged
    results["notes"] = list(dict.fromkeys([*results["notes"], *old.get("notes", [])]))
    kept = [n for n in merged if n not in current]
    results["config"]["kept_from_previous"] = kept
    return kept


def _try_load(bench, data_dir: Path):
    try:
        return bench.load(data_dir)
    except DataError:
        return None


def _model_from_meta(out: Path, specs: dict) -> dict:
    for name in specs:
        meta = out / "predictions" / f"{name}.meta.json"
        if meta.exists():
            try:
                spec, _, fp = json.loads(meta.read_text())["model"].rpartition("#")
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
            return {"spec": spec, "fingerprint": fp, "method": "from saved predictions"}
    return {"spec": None, "fingerprint": None, "method": "unknown"}


if __name__ == "__main__":
    sys.exit(main())
