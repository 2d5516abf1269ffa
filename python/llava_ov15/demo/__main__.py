"""End-to-end demo on a generated corpus: `python -m llava_ov15.demo [--out demo-out]`.

Generates a small corpus of real photographs (scikit-image samples) in all three sample
shapes, builds WebDataset shards with `llava-pack build`, and prints the summary.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from llava_ov15.cli.pack import main as pack_main
from llava_ov15.demo.corpus import CorpusSpec, write_corpus


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="demo-out", help="working directory (recreated)")
    ap.add_argument("-n", type=int, default=300, help="samples in the demo corpus")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    spec = CorpusSpec(n=args.n, seed=0, max_side=1024, multi_image_fraction=0.05,
                      text_only_fraction=0.03, shapes=("caption", "conversations", "messages"))
    print(f"demo: writing a {spec.n}-sample corpus under {out}/corpus", flush=True)
    corpus = write_corpus(out / "corpus", spec)
    print("demo: llava-pack build", flush=True)
    return pack_main(["build", "--input", str(corpus), "--output", str(out / "shards"),
                      "--shard-size", "16MB", "--progress", "log"])


if __name__ == "__main__":
    sys.exit(main())
