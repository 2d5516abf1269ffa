"""Resumable per-benchmark evaluation: predictions are appended to a JSONL as they are produced,
a rerun skips finished documents, ``rescore`` only recomputes scores from the saved file."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from .benchmarks import Benchmark
from .data import DataError, ParquetTable
from .predictor import Predictor


class ResumeError(RuntimeError):
    """Saved predictions do not belong to this run (different model or settings)."""


def postprocess(raw: str, until: Sequence[str]) -> str:
    """lmms-eval: cut at each stop string (never at "\\n\\n"), then strip."""
    for term in until:
        if term and term != "\n\n":
            raw = raw.split(term)[0]
    return raw.strip()


def read_predictions(path: Path, repair: bool = True) -> dict[int, dict]:
    """Records by doc_id. A torn last line (crash mid-write) is dropped and, with ``repair``,
    cut from the file so that appends continue on a clean line."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    out: dict[int, dict] = {}
    good_end = 0
    pos = 0
    for line in data.splitlines(keepends=True):
        pos += len(line)
        if not line.strip():
            good_end = pos
            continue
        try:
            rec = json.loads(line)
            if not line.endswith(b"\n"):
                raise ValueError("unterminated")
        except ValueError:
            if pos != len(data):
                raise ResumeError(f"{path}: corrupt record in the middle of the file") from None
            break
        out[int(rec["doc_id"])] = rec
        good_end = pos
    if repair and good_end != len(data):
        with path.open("r+b") as f:
            f.truncate(good_end)
    return out


def check_meta(path: Path, meta: dict, overwrite: bool) -> None:
    """Record the settings of a prediction file; refuse to mix settings on resume."""
    if path.exists() and not overwrite:
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
        if diff:
            raise ResumeError(
                f"{path}: saved predictions were made with different settings {diff}; "
                "use another --output, or --overwrite to start over")
        return
    path.write_text(json.dumps(meta, indent=1, sort_keys=True))


def load_images(table: ParquetTable, i: int, columns: Sequence[str],
                content: Sequence[str | int] | None):
    images = [table.image(i, c.rstrip("?")) for c in columns]
    if content is None:
        return [im for im in images if im is not None], None
    if any(im is None for im in images):
        missing = [c for c, im in zip(columns, images, strict=True) if im is None]
        raise DataError(f"row {i}: referenced image column(s) {missing} are empty")
    return images, content


def run_benchmark(bench: Benchmark, table: ParquetTable, out_dir: Path, *,
                  predictor: Predictor | None, model_id: str, limit: int | None = None,
                  rescore: bool = False, overwrite: bool = False,
                  progress: bool = True) -> dict:
    """Predict what is missing (unless ``rescore``), then score. Returns the benchmark entry
    of results.json (plus ``_docs``/``_preds``/``_per_sample`` for the report)."""
    pred_dir = out_dir / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    path = pred_dir / f"{bench.name}.jsonl"
    meta_path = pred_dir / f"{bench.name}.meta.json"
    total = len(table)
    if overwrite and not rescore:
        path.unlink(missing_ok=True)
    done = read_predictions(path)
    if rescore:
        if not done:
            raise ResumeError(f"--rescore: no saved predictions in {path}")
        n = min(limit, total) if limit is not None else max(done) + 1
    else:
        if predictor is None:
            raise ValueError("a predictor is needed unless rescoring")
        n = min(limit, total) if limit is not None else total
        meta = {"benchmark": bench.name, "model": model_id,
                "max_new_tokens": bench.max_new_tokens, "until": list(bench.until),
                "greedy": True, "batch_size": 1}
        check_meta(meta_path, meta, overwrite)
        todo = [i for i in range(n) if i not in done]
        with path.open("a", encoding="utf-8") as f, tqdm(
                total=n, initial=n - len(todo), desc=bench.name, unit="q",
                disable=not progress, dynamic_ncols=True) as bar:
            for i in todo:
                doc = table.docs[i]
                prompt = bench.build_prompt(doc)
                images, content = load_images(table, i, prompt.images, prompt.content)
                raw = predictor.predict(images, prompt.text, max_new_tokens=bench.max_new_tokens,
                                        content=content)
                rec = {"doc_id": i, "key": bench.key(doc), "prompt": prompt.text, "raw": raw,
                       "prediction": postprocess(raw, bench.until)}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
                done[i] = rec
                bar.update(1)
            os.fsync(f.fileno())
    missing = [i for i in range(n) if i not in done]
    if missing:
        raise ResumeError(f"{path}: {len(missing)} of {n} predictions missing "
                          f"(first doc_id {missing[0]}); run without --rescore to finish")
    docs = [table.docs[i] for i in range(n)]
    preds = [str(done[i]["prediction"]) for i in range(n)]
    entry: dict = {"title": bench.title, "n_samples": n, "n_total": total,
                   "complete": n == total, "max_new_tokens": bench.max_new_tokens,
                   "data_files": [str(f) for f in table.files],
                   "predictions": str(path.relative_to(out_dir)), "notes": []}
    if bench.notes:
        entry["notes"].append(bench.notes)
    if not entry["complete"]:
        entry["notes"].append(f"partial run: {n} of {total} samples (--limit)")
    per_sample = None
    if bench.score is not None:
        r = bench.score(docs, preds)
        entry["metrics"] = r["metrics"]
        entry["breakdowns"] = r.get("breakdowns", {})
        entry["notes"] += r.get("notes", [])
        entry["headline"] = {"metric": bench.headline, "value": r["metrics"][bench.headline]}
        per_sample = r.get("per_sample")
    else:
        entry["metrics"], entry["breakdowns"], entry["headline"] = {}, {}, None
        entry["notes"].append("no ground truth in this split: submission file only")
    if bench.submission is not None and bench.submission_file:
        sub = out_dir / "submissions" / bench.submission_file
        sub.parent.mkdir(parents=True, exist_ok=True)
        rows = bench.submission(docs, preds)
        if sub.suffix == ".jsonl":
            sub.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        else:
            sub.write_text(json.dumps(rows, ensure_ascii=False))
        entry["submission"] = str(sub.relative_to(out_dir))
    entry["_docs"], entry["_preds"], entry["_per_sample"] = docs, preds, per_sample
    return entry
