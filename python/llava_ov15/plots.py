"""PNG histograms of a `buckets.json` document (matplotlib, imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_bucket_plots(doc: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write aspect_ratios.png, native_sizes.png, token_counts.png and buckets.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(out_dir)
    h = doc["histograms"]
    written = []

    def save(fig, name):
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    a = h["log2_aspect_ratio"]
    counts = np.array(a["counts"])
    left = a["start"] + a["step"] * np.arange(len(counts))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(2.0 ** (left + a["step"] / 2), counts, width=2.0 ** (left + a["step"]) - 2.0 ** left,
           color="#4c72b0")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("aspect ratio (width / height, log scale; edges clamp)")
    ax.set_ylabel("images")
    ax.set_title(f"Aspect ratios of {doc['images']} images")
    save(fig, "aspect_ratios.png")

    s = h["native_size"]
    grid = np.array(s["counts"], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 5))
    n = grid.shape[0] * s["bin_px"]
    im = ax.imshow(np.log10(grid + 1), origin="lower", extent=(0, n, 0, n), cmap="viridis")
    fig.colorbar(im, ax=ax, label="log10(images + 1)")
    ax.set_xlabel("native width (px; last bin open)")
    ax.set_ylabel("native height (px; last bin open)")
    ax.set_title("Native image sizes")
    save(fig, "native_sizes.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, what in ((axes[0], "sample_tokens", "sample length (tokens)"),
                          (axes[1], "image_tokens", "tokens per image")):
        t = h[key]
        c = np.array(t["counts"])
        ax.bar(np.arange(len(c)) * t["bin"], c, width=t["bin"], align="edge", color="#55a868")
        nz = np.flatnonzero(c)
        ax.set_xlim(0, ((nz[-1] if len(nz) else 0) + 2) * t["bin"])  # zoom to the data
        ax.set_xlabel(f"{what}; last bin ≥ {(len(c) - 1) * t['bin']}")
        ax.set_ylabel("count")
    axes[0].set_title(f"Token counts of {doc['samples']} samples "
                      f"(p50 {doc['tokens']['p50']}, p99 {doc['tokens']['p99']})")
    axes[1].set_title("Image tokens after smart_resize")
    save(fig, "token_counts.png")

    aspects = list(dict.fromkeys(b["aspect_ratio"] for b in doc["buckets"]))
    tokens = list(dict.fromkeys(sorted((b["tokens"] for b in doc["buckets"]),
                                       key=lambda x: float(x[1:].split(",")[0]))))
    m = np.zeros((len(aspects), len(tokens)))
    for b in doc["buckets"]:
        m[aspects.index(b["aspect_ratio"]), tokens.index(b["tokens"])] = b["samples"]
    size = (1.6 + 1.1 * max(1, len(tokens)), 1.2 + 0.5 * max(1, len(aspects)))
    fig, ax = plt.subplots(figsize=size)
    ax.imshow(m, cmap="Blues", aspect="auto")
    for i in range(len(aspects)):
        for j in range(len(tokens)):
            if m[i, j]:
                dark = m[i, j] > 0.6 * m.max()
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    ax.set_xticks(range(len(tokens)), tokens, rotation=30, ha="right")
    ax.set_yticks(range(len(aspects)), aspects)
    ax.set_xlabel("sample tokens")
    ax.set_ylabel("aspect ratio (w/h) of first image")
    ax.set_title("Samples per bucket")
    save(fig, "buckets.png")
    return written
