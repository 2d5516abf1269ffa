"""Peak RSS of `llava-pack build` for 10k vs 200k input lines (memory must stay flat).

    python benches/rss_scaling.py [--small 10000] [--large 200000] [--array]

`--array` writes the same records as one JSON array (`[{…}, {…}]`, streamed element by element)
instead of JSON Lines.

Both corpora reference the same 200 real-photo JPEGs (so the image work per line is the same)
and run with `--dedup off`; the only growth expected is the key table (~10 B/sample).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mb(corpus: Path, out: Path) -> tuple[float, float]:
    # VmHWM, not ru_maxrss: the latter survives fork+exec and would report the parent's peak.
    code = (
        "from llava_ov15 import pack; "
        f"pack.build({str(corpus)!r}, {str(out)!r}, dedup='off', progress='quiet', "
        "shard_size=256 << 20); "
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    )
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return int(p.stdout.strip().splitlines()[-1]) / 1024, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--large", type=int, default=200_000)
    ap.add_argument("--array", action="store_true", help="one JSON array instead of JSONL")
    args = ap.parse_args()
    from llava_ov15.demo.corpus import CorpusSpec, write_corpus

    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        base = write_corpus(work / "c", CorpusSpec(n=200, seed=3, max_side=512))
        recs = [json.loads(x) for x in base.read_text().splitlines()]
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for n in (args.small, args.large):
            corpus = work / "c" / (f"array{n}.json" if args.array else f"lines{n}.jsonl")
            with corpus.open("w") as f:
                f.write("[\n" if args.array else "")
                for i in range(n):
                    r = dict(recs[i % len(recs)], id=f"s{i}")
                    sep = ",\n" if args.array and i else ""
                    f.write(sep + json.dumps(r) + ("" if args.array else "\n"))
                f.write("\n]\n" if args.array else "")
            rss, secs = peak_rss_mb(corpus, work / f"out{n}")
            unit = "elements" if args.array else "lines"
            size = corpus.stat().st_size >> 20
            print(f"{n:>8} {unit} ({size} MB): peak RSS {rss:7.1f} MB, {secs:6.1f}s"
                  f" ({n / secs:.0f} {unit}/s)")
        print(f"(this driver process: {base_rss:.0f} MB)")


if __name__ == "__main__":
    main()
