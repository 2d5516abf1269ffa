"""results.json and a self-contained report.html (matplotlib PNGs embedded as data URIs)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from .published import MODELS, absent_reason

_COLORS = {"ours": "#1f77b4", MODELS[0]: "#ff7f0e", MODELS[1]: "#2ca02c"}


def public_entry(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if not k.startswith("_")}


def write_results(path: Path, results: dict) -> None:
    clean = dict(results)
    clean["benchmarks"] = {k: public_entry(v) for k, v in results["benchmarks"].items()}
    path.write_text(json.dumps(clean, indent=1, ensure_ascii=False, default=str))


# The page is at most PAGE_WIDTH_PX wide (CSS below); every chart is drawn at a fixed size no
# wider than that (constrained layout, no "tight" bounding box that could grow the image).
PAGE_WIDTH_PX = 1100
CHART_DPI = 100
CHART_WIDTH_IN = 10.0   # 1000 px


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=CHART_DPI)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def summary_chart(bench: dict, specs: dict) -> str | None:
    fig = summary_figure(bench, specs)
    return None if fig is None else _png(fig)


def summary_figure(bench: dict, specs: dict):
    """Headline scores next to the published figures. Benchmarks scored in percent share one
    panel; each other scale (MME total out of 2800, COCO CIDEr x100) gets a panel of its own
    with its own axis, so no score is rescaled and none is left out."""
    rows = [(k, v) for k, v in bench.items() if v.get("headline")]
    if not rows:
        return None
    pct = [(k, v) for k, v in rows if specs[k].headline_max <= 100]
    other = [(k, v) for k, v in rows if specs[k].headline_max > 100]
    plt = _pyplot()
    ratios = ([max(2.0, 0.55 * len(pct))] if pct else []) + [1.0] * len(other)
    fig, axes = plt.subplots(1, len(ratios), figsize=(CHART_WIDTH_IN, 4.4), squeeze=False,
                             width_ratios=ratios, layout="constrained")
    axes = list(axes[0])
    width = 0.27
    labelled: set[str] = set()

    def label(name: str) -> str | None:
        if name in labelled:
            return None
        labelled.add(name)
        return name

    if pct:
        ax = axes.pop(0)
        for i, (_name, e) in enumerate(pct):
            v = e["headline"]["value"]
            ax.bar(i - width, v, width, color=_COLORS["ours"], label=label("ours"))
            ax.text(i - width, v + 1, f"{v:.1f}", ha="center", fontsize=6)
            pub = e.get("published")
            if pub:
                hatch = None if pub["match"] == "exact" else "//"
                for j, m in enumerate(MODELS):
                    ax.bar(i + j * width, pub["scores"][m], width, color=_COLORS[m],
                           hatch=hatch, label=label(m))
        ax.set_xticks(range(len(pct)))
        ax.set_xticklabels([n for n, _ in pct], rotation=45, ha="right", fontsize=7)
        ax.set_ylim(0, 105)
        ax.set_ylabel("score (%)")
        ax.set_title("percent scale (0-100)", fontsize=8)
    for ax, (name, e) in zip(axes, other, strict=True):
        v = e["headline"]["value"]
        top = max(specs[name].headline_max, v * 1.1)
        ax.bar(0, v, 0.5, color=_COLORS["ours"], label=label("ours"))
        ax.text(0, v + top * 0.01, f"{v:.1f}", ha="center", fontsize=6)
        ax.set_xticks([0])
        ax.set_xticklabels([name], rotation=45, ha="right", fontsize=7)
        ax.set_xlim(-0.8, 0.8)
        ax.set_ylim(0, top)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(f"{e['headline']['metric']}\n(0-{specs[name].headline_max:g}, own axis)",
                     fontsize=8)
    fig.suptitle("Headline scores - raw values, not normalised: percent-scale benchmarks share "
                 "the left panel;\nMME and COCO (other scales) have their own panels and axes. "
                 "Hatched: published on a non-identical split/variant.", fontsize=8)
    fig.legend(loc="outside lower center", ncol=3, fontsize=7)
    return fig


def category_chart(name: str, cats: dict[str, float], ymax: float | None) -> str:
    plt = _pyplot()
    w = min(CHART_WIDTH_IN, max(4.0, 0.3 * len(cats) + 2))
    fig, ax = plt.subplots(figsize=(w, 3.4), layout="constrained")
    ax.bar(range(len(cats)), list(cats.values()), color=_COLORS["ours"])
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels(list(cats), rotation=45, ha="right", fontsize=6 if len(cats) > 20 else 7)
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
    return "(no reference answer in this split)"


def attach_saved_samples(entry: dict, out_dir: Path, table) -> None:
    """For a benchmark kept from an earlier run: its saved predictions and rows, so that the
    report still shows examples (without per-sample scores). Best effort: nothing on failure."""
    from .runner import ResumeError, read_predictions

    n = entry.get("n_samples", 0)
    if table is None or not entry.get("predictions") or len(table) < n:
        return
    try:
        recs = read_predictions(out_dir / entry["predictions"], repair=False)
    except (OSError, ResumeError):
        return
    if any(i not in recs for i in range(n)):
        return
    entry["_docs"] = table.docs[:n]
    entry["_preds"] = [recs[i]["prediction"] for i in range(n)]
    entry["_per_sample"] = None


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


_CSS = f"""body{{font-family:sans-serif;margin:2em;max-width:{PAGE_WIDTH_PX}px}}
table{{border-collapse:collapse}}img{{max-width:100%;height:auto}}
.callout{{background:#fff6d6;border:1px solid #e0c060;padding:6px 10px;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}}
th{{background:#f3f3f3}}.note{{color:#666;font-size:12px}}img.t{{max-width:224px}}
pre{{white-space:pre-wrap;margin:0;font-size:12px;max-width:420px}}"""


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
    mnt = results.get("config", {}).get("max_new_tokens")
    if mnt is not None:
        out.append(f"<p>Generation limit: <b>{mnt} new tokens for every benchmark</b> "
                   "(--max-new-tokens), instead of each task's own.</p>")
    for note in results.get("notes", []):
        out.append(f"<div class='callout'><b>Note:</b> {esc(note)}</div>")
    out.append("<h2>Summary</h2><table><tr><th>benchmark</th><th>samples</th><th>headline</th>"
               f"<th>ours</th><th>{MODELS[0]}</th><th>{MODELS[1]}</th><th>notes</th></tr>")
    for name, e in bench.items():
        h = e.get("headline")
        pub = e.get("published")
        if pub:
            pub_cells = "".join(
                f"<td>{pub['scores'][mm]:.1f}{'' if pub['match'] == 'exact' else '*'}</td>"
                for mm in MODELS)
        else:
            pub_cells = f"<td colspan='2' class='note'>{esc(absent_reason(name))}</td>"
        notes = list(e.get("notes", []))
        if pub and pub["match"] != "exact":
            notes.append(f"* published figure is '{pub['name']}' ({pub['match']})")
        if h:
            metric, value = esc(h["metric"]), f"<b>{h['value']:.2f}</b>"
        else:
            metric, value = "none", "<span class='note'>no answers in this split: see the " \
                "submission file</span>"
        out.append(f"<tr><td>{esc(e['title'])}</td><td>{e['n_samples']}/{e['n_total']}</td>"
                   f"<td>{metric}</td><td>{value}</td>{pub_cells}"
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
        if "_docs" not in e:
            out.append("<p class='note'>Sample predictions not shown: this benchmark's results "
                       "were kept from an earlier run and its data or predictions could not be "
                       "read now.</p>")
            continue
        rows = sample_rows(e, specs[name], tables.get(name), samples_per_benchmark)
        out.append("<table><tr><th>#</th><th>image</th><th>prompt</th><th>prediction</th>"
                   "<th>reference</th><th>score</th></tr>")
        for r in rows:
            imgs = "".join(f"<img class='t' src='data:image/jpeg;base64,{t}'>" for t in r["thumbs"])
            sc = "n/a" if r["score"] is None else f"{r['score']:.1f}"
            out.append(f"<tr><td>{r['doc_id']}</td><td>{imgs}</td>"
                       f"<td><pre>{esc(r['prompt'])}</pre></td><td>{esc(r['prediction'])}</td>"
                       f"<td>{esc(r['gold'])}</td><td>{sc}</td></tr>")
        out.append("</table>")
    out.append(f"<h2>Versions</h2><pre>{esc(json.dumps(results['versions'], indent=1))}</pre>")
    out.append("</body></html>")
    path.write_text("\n".join(out), encoding="utf-8")
