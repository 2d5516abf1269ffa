"""Speed of text cleaning: cleaned captions/s on one core, and build samples/s with
`--text-clean default` vs `off`.

    python benches/text_clean.py [-n 200000] [--build-n 200] [--repeat 3]

(a) N synthetic web captions of 20-60 words (seeded): 70 % clean English, 10 % with HTML
    tags and entities, 5 % mojibake, 5 % zero-width/bidi marks and odd spaces, 5 % NFD
    accents, 5 % Chinese/Japanese. `pack.clean_captions` runs the build's caption path
    (normalisations + rules) on one thread; the Python↔Rust list conversion is timed alone
    with `--text-clean off` and subtracted for the net rate (target ≥ 200k captions/s/core).
(b) The bench corpus of benches/compare_build.py (real photographs, seed 0) built with one
    worker, default vs off, interleaved rounds (medians).
Rates are per second of CPU time of the thread (a) or process (b), so that a machine shared
with other jobs does not skew them; wall-clock rates are printed next to them.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

WORDS = (
    "a the of on in with and at near two three small large red blue green white black old "
    "young man woman child dog cat bird car bus train street road building house tree park "
    "river lake beach mountain sky cloud sunset table chair window door plate cup food pizza "
    "sandwich laptop phone sign people group standing sitting walking running holding "
    "looking wearing shirt hat jacket bicycle motorcycle boat field grass snow water city "
    "night day light shadow background front behind next to over under colorful bright"
).split()
ZH = "一只橘猫趴在窗台上晒太阳旁边有一盆绿萝街道上的红色公交车和行人在雨中撑伞"
JA = "夕暮れの海辺で犬が砂浜を走っている東京タワーと青空の写真桜の花が咲いている公園"


def caption(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.randint(20, 60))
    text = " ".join(words).capitalize() + "."
    r = rng.random()
    if r < 0.70:
        return text
    if r < 0.80:
        i = rng.randrange(len(words))
        words[i] = f"<b>{words[i]}</b> &amp;"
        return "<p>" + " ".join(words) + "</p>"
    if r < 0.85:
        return (text + " café").encode().decode("latin-1")
    if r < 0.90:
        return text.replace(" ", " \u200b", 3).replace(" ", "\u00a0", 2) + "\u200f"
    if r < 0.95:
        return text + " cafe\u0301 naı\u0308ve"
    src = ZH if rng.random() < 0.5 else JA
    start = rng.randrange(len(src) - 30)
    return src[start : start + rng.randint(20, 30)] + "。"


def median_time(fn, repeat: int) -> tuple[float, float]:
    """Median (CPU seconds of this thread, wall seconds) of `repeat` calls."""
    cpu, wall = [], []
    for _ in range(repeat):
        c0, t0 = time.thread_time(), time.perf_counter()
        fn()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
    return statistics.median(cpu), statistics.median(wall)


def process_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def bench_captions(n: int, repeat: int) -> None:
    from llava_ov15 import pack

    rng = random.Random(0)
    caps = [caption(rng) for _ in range(n)]
    words = sum(len(c.split()) for c in caps) / n
    (t_on, w_on) = median_time(lambda: pack.clean_captions(caps, text_clean="default"), repeat)
    (t_off, _) = median_time(lambda: pack.clean_captions(caps, text_clean="off"), repeat)
    out = pack.clean_captions(caps)
    changed = sum(c != o for c, (o, _) in zip(caps, out, strict=True))
    rejected = sum(r is not None for _, r in out)
    print(f"captions: {n}, {words:.0f} words on average; cleaning changed {changed}, "
          f"rejected {rejected}")
    print(f"  end to end (incl. Python list conversion) {n / t_on:12,.0f} captions/CPU-s"
          f"  (wall {n / w_on:,.0f}/s)")
    net = max(t_on - t_off, 1e-9)
    print(f"  net of conversion ({t_off:.3f}s of {t_on:.3f}s) {n / net:14,.0f} captions/CPU-s"
          "  (target ≥ 200,000 per core)")


def bench_build(n: int, repeat: int) -> None:
    from llava_ov15 import pack
    from llava_ov15.demo.corpus import CorpusSpec, write_corpus

    work = Path(tempfile.mkdtemp(prefix="llava-text-bench-"))
    try:
        write_corpus(work / "corpus", CorpusSpec(n=n, seed=0))
        corpus = work / "corpus" / "corpus.jsonl"
        cpu: dict[str, list[float]] = {"default": [], "off": []}
        wall: dict[str, list[float]] = {"default": [], "off": []}
        for _ in range(repeat):
            for mode in cpu:
                out = work / mode
                shutil.rmtree(out, ignore_errors=True)
                c0, t0 = process_cpu(), time.perf_counter()
                pack.build(corpus, out, workers=1, progress="quiet", text_clean=mode)
                cpu[mode].append(process_cpu() - c0)
                wall[mode].append(time.perf_counter() - t0)
        rate = {m: n / statistics.median(t) for m, t in cpu.items()}
        print(f"build, bench corpus ({n} photos), 1 worker, medians of {repeat}:")
        for m, r in rate.items():
            w = n / statistics.median(wall[m])
            print(f"  --text-clean {m:8s} {r:8.1f} samples/CPU-s  (wall {w:.1f} samples/s)")
        print(f"  default / off {rate['default'] / rate['off']:.3f} (CPU-time rates)")
    finally:
        shutil.rmtree(work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=200_000, help="captions to clean")
    ap.add_argument("--build-n", type=int, default=200, help="photos in the build corpus (0: skip)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    bench_captions(args.n, args.repeat)
    if args.build_n:
        bench_build(args.build_n, args.repeat)


if __name__ == "__main__":
    main()
