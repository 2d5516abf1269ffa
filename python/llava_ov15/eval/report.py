"""results.json and a self-contained report.html (matplotlib PNGs embedded as data URIs)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from .published import MODELS

_COLORS = {"ours": "#1f77b4", MODELS[0]: "#ff7f0e", MODELS[1]: "#2ca02c"}


def public_entry(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if not k.startswith("_")}


def write_results(path: Path, results: dict) -> None:
    clean = dict(results)
    clean["benchmarks"] = {k: public_entry(v) for k, v in results["benchmarks"].items()}
    path.write_text(json.dumps(clean, indent=1, ensure_ascii=False, default=str))


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def summary_chart(bench: dict, specs: dict) -> str | None:
    """Headline scores (percent scale) next to the published figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(k, v) for k, v in bench.items()
            if v.get("headline") and specs[k].headline_max <= 100]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(rows) + 2), 3.6))
    width = 0.27
    labelled: set[str] = set()

    def label(name: str) -> str | None:
        if name in labelled:
            return None
        labelled.add(name)
        return name

    for i, (_name, e) in enumerate(rows):
        v = e["headline"]["value"]
        ax.bar(i - width, v, width, color=_COLORS["ours"], label=label("ours"))
        ax.text(i - width, v + 1, f"{v:.1f}", ha="center", fontsize=7)
        pub = e.get("published")
        if pub:
            hatch = None if pub["match"] == "exact" else "//"
            for j, m in enumerate(MODELS):
                ax.bar(i + j * width, pub["scores"][m], width, color=_COLORS[m], hatch=hatch,
                       label=label(m))
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([n for n, _ in rows], rotation=30, ha="right")
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("Headline scores (hatched: published on a non-identical split/variant)",
                 fontsize=9)
    return _png(fig)


def category_chart(name: str, cats: dict[str, float], ymax: float | None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(cats) + 2), 3.2))
    ax.bar(range(len(cats)), list(cats.values()), color=_COLORS["ours"])
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels(list(cats), rotation=45, ha="right", fontsize=7)
    if ymax:
        ax.set_ylim(0, ymax)
    ax.set_title(name, fontsize=9)
    return _png(fig)


def _thumb(im) -> str:
    im = im.copy()
    im.thumbnail((224, 224))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode()


def _gold(doc: dict) -> str:
    for k in ("answer", "answers"):
        if k in doc and doc[k] is not None:
            v = doc[k]
            if isinstance(v, list):
                v = [a.get("answer", a) if isinstance(a, dict) else a for a in v]
            return str(v)[:200]
    return "-"


def sample_rows(entry: dict, spec, table, k: int) -> list[dict]:
    docs, preds, per = entry["_docs"], entry["_preds"], entry.get("_per_sample")
    n = len(docs)
    idx = sorted({round(j * (n - 1) / max(1, k - 1)) for j in range(min(k, n))}) if n else []
    rows = []
    for i in idx:
        thumbs = []
        prompt = spec.build_prompt(docs[i])
        if table is not None:
            for col in prompt.images[:2]:
                try:
                    im = table.image(i, col.rstrip("?"))
                except Exception:  # noqa: BLE001 - the report must not fail on one image
                    im = None
                if im is not None:
                    thumbs.append(_thumb(im))
        rows.append({"doc_id": i, "prompt": prompt.text,
                     "prediction": preds[i], "gold": _gold(docs[i]),
                     "score": None if per is None else per[i], "thumbs": thumbs})
    return rows


_CSS = """body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}
th{background:#f3f3f3}.note{color:#666;font-size:12px}img.t{max-width:224px}
pre{white-space:pre-wrap;margin:0;font-size:12px;max-width:420px}"""


def write_report(path: Path, results: dict, specs: dict, tables: dict,
                 samples_per_benchmark: int = 6) -> None:
    """``results`` with the runner's private keys; ``specs``/``tables`` by benchmark name."""
    esc = html.escape
    bench = results["benchmarks"]
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>llava-ov15 eval</title>"
           f"<style>{_CSS}</style></head><body><h1>Evaluation report</h1>"]
    m = results["model"]
    out.append(f"<p>Model <code>{esc(str(m.get('spec')))}</code>, fingerprint "
               f"<code>{esc(str(m.get('fingerprint')))}</code>; created "
               f"{esc(results['created'])}; greedy, batch size 1.</p>")
    out.append("<h2>Summary</h2><table><tr><th>benchmark</th><th>samples</th><th>headline</th>"
               f"<th>ours</th><th>{MODELS[0]}</th><th>{MODELS[1]}</th><th>notes</th></tr>")
    for e in bench.values():
        h = e.get("headline")
        pub = e.get("published")
        pubv = [f"{pub['scores'][mm]:.1f}" + ("" if pub["match"] == "exact" else "*")
                for mm in MODELS] if pub else ["-", "-"]
        notes = list(e.get("notes", []))
        if pub and pub["match"] != "exact":
            notes.append(f"* published figure is '{pub['name']}' ({pub['match']})")
        metric, value = (esc(h["metric"]), f"<b>{h['value']:.2f}</b>") if h else ("-", "-")
        out.append(f"<tr><td>{esc(e['title'])}</td><td>{e['n_samples']}/{e['n_total']}</td>"
                   f"<td>{metric}</td><td>{value}</td><td>{pubv[0]}</td><td>{pubv[1]}</td>"
                   f"<td class='note'>{esc('; '.join(notes))}</td></tr>")
    out.append("</table>")
    chart = summary_chart(bench, specs)
    if chart:
        out.append(f"<p><img src='data:image/png;base64,{chart}'></p>")
    for name, e in bench.items():
        out.append(f"<h2 id='{esc(name)}'>{esc(e['title'])}</h2>")
        if e.get("metrics"):
            cells = "".join(f"<tr><td>{esc(k)}</td><td>{v:.4g}</td></tr>"
                            for k, v in e["metrics"].items())
            out.append(f"<table><tr><th>metric</th><th>value</th></tr>{cells}</table>")
        for bname, cats in e.get("breakdowns", {}).items():
            if cats and len(cats) <= 80:
                spec = specs[name]
                ymax = 200.0 if name == "mme" else (100.0 if spec.headline_max <= 100 else None)
                if bname.endswith("_points"):
                    ymax = None
                img = category_chart(f"{e['title']}: {bname}", cats, ymax)
                out.append(f"<p><img src='data:image/png;base64,{img}'></p>")
        if e.get("submission"):
            out.append(f"<p>Submission file: <code>{esc(e['submission'])}</code></p>")
        rows = sample_rows(e, specs[name], tables.get(name), samples_per_benchmark)
        out.append("<table><tr><th>#</th><th>image</th><th>prompt</th><th>prediction</th>"
                   "<th>reference</th><th>score</th></tr>")
        for r in rows:
            imgs = "".join(f"<img class='t' src='data:image/jpeg;base64,{t}'>" for t in r["thumbs"])
            sc = "-" if r["score"] is None else f"{r['score']:.1f}"
            out.append(f"<tr><td>{r['doc_id']}</td><td>{imgs}</td>"
                       f"<td><pre>{esc(r['prompt'])}</pre></td><td>{esc(r['prediction'])}</td>"
                       f"<td>{esc(r['gold'])}</td><td>{sc}</td></tr>")
        out.append("</table>")
    out.append(f"<h2>Versions</h2><pre>{esc(json.dumps(results['versions'], indent=1))}</pre>")
    out.append("</body></html>")
    path.write_text("\n".join(out), encoding="utf-8")
