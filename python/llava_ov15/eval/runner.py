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


def read_predictions(path: Path, repair: bool = True,
                     lines: dict[int, int] | None = None) -> dict[int, dict]:
    """Records by doc_id. A torn last line (crash mid-write) is dropped and, with ``repair``,
    cut from the file so that appends continue on a clean line. ``lines``, when given, is
    filled with each record's line number (1-based) so later errors can point at it.
    A complete record that is not ``{"doc_id": int, "prediction": str, ...}`` is an error
    naming the file and line (a hand-edited or foreign file must not turn into a traceback)."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    out: dict[int, dict] = {}
    good_end = 0
    pos = 0
    for lineno, line in enumerate(data.splitlines(keepends=True), start=1):
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
                raise ResumeError(f"{path} line {lineno}: corrupt record in the middle of the "
                                  "file (not JSON)") from None
            break
        doc_id = _check_record(rec, path, lineno)
        out[doc_id] = rec
        if lines is not None:
            lines[doc_id] = lineno
        good_end = pos
    if repair and good_end != len(data):
        with path.open("r+b") as f:
            f.truncate(good_end)
    return out


def _check_record(rec, path: Path, lineno: int) -> int:
    where = f"{path} line {lineno}"
    if not isinstance(rec, dict):
        raise ResumeError(f"{where}: a prediction record must be a JSON object, "
                          f"got {type(rec).__name__}")
    doc_id = rec.get("doc_id")
    if isinstance(doc_id, bool) or not isinstance(doc_id, int) or doc_id < 0:
        raise ResumeError(f"{where}: record has no valid 'doc_id' (a row number >= 0), "
                          f"got {doc_id!r}")
    if "prediction" not in rec:
        raise ResumeError(f"{where}: record for doc_id {doc_id} has no 'prediction' field")
    if not isinstance(rec["prediction"], str):
        raise ResumeError(f"{where}: 'prediction' of doc_id {doc_id} must be a string, "
                          f"got {type(rec['prediction']).__name__}")
    return doc_id


def check_rows(path: Path, done: dict[int, dict], lines: dict[int, int], bench: Benchmark,
               table: ParquetTable, n: int) -> None:
    """Saved records must belong to the rows of this data: a doc_id past the end of the table
    or a record whose key differs from the row's means the predictions were made on other data
    (another --data-dir, or a different version of the files)."""
    total = len(table)
    beyond = sorted(i for i in done if i >= total)
    if beyond and n > total:
        i = beyond[0]
        files = ", ".join(str(f) for f in table.files)
        raise ResumeError(
            f"{path} line {lines.get(i, '?')}: doc_id {i} is beyond the {total} rows of "
            f"{bench.name}'s data ({files}); these predictions were made on other data "
            "(check --data-dir)")
    for i in sorted(done):
        if i >= n:
            break
        saved = done[i].get("key")
        if saved is None:
            continue
        expect = bench.key(table.docs[i])
        if str(saved) != expect:
            raise ResumeError(
                f"{path} line {lines.get(i, '?')}: doc_id {i} was saved for key {saved!r} but "
                f"row {i} of the data has key {expect!r}; these predictions were made on other "
                "data (check --data-dir, or --overwrite to start over)")


def check_meta(path: Path, meta: dict, overwrite: bool) -> None:
    """Record the settings of a prediction file; refuse to mix settings on resume."""
    if path.exists() and not overwrite:
        old = _saved_meta(path)
        diff = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
        if diff:
            raise ResumeError(
                f"{path}: saved predictions were made with different settings {diff}; "
                "use another --output, or --overwrite to start over")
        return
    path.write_text(json.dumps(meta, indent=1, sort_keys=True))


def _saved_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ResumeError(f"{path}: unreadable settings file ({e})") from None
    if not isinstance(meta, dict):
        raise ResumeError(f"{path}: settings file is not a JSON object")
    return meta


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
                  progress: bool = True, max_new_tokens: int | None = None,
                  scorer_timeout_s: float | None = None) -> dict:
    """Predict what is missing (unless ``rescore``), then score. Returns the benchmark entry
    of results.json (plus ``_docs``/``_preds``/``_per_sample`` for the report).
    ``max_new_tokens`` overrides the task's generation limit (recorded with the predictions,
    so a resume with another limit is refused); ``scorer_timeout_s`` bounds scorers that run
    external programs (COCO's Java tokenizer and METEOR)."""
    pred_dir = out_dir / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    path = pred_dir / f"{bench.name}.jsonl"
    meta_path = pred_dir / f"{bench.name}.meta.json"
    total = len(table)
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    mnt = bench.max_new_tokens if max_new_tokens is None else max_new_tokens
    if overwrite and not rescore:
        path.unlink(missing_ok=True)
    lines: dict[int, int] = {}
    done = read_predictions(path, lines=lines)
    if rescore:
        if not done:
            raise ResumeError(f"--rescore: no saved predictions in {path}")
        n = min(limit, total) if limit is not None else max(done) + 1
        if meta_path.exists():  # the limit the saved predictions were generated with
            mnt = _saved_meta(meta_path).get("max_new_tokens", mnt)
        check_rows(path, done, lines, bench, table, n)
    else:
        if predictor is None:
            raise ValueError("a predictor is needed unless rescoring")
        n = min(limit, total) if limit is not None else total
        check_rows(path, done, lines, bench, table, n)
        meta = {"benchmark": bench.name, "model": model_id,
                "max_new_tokens": mnt, "until": list(bench.until),
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
                raw = predictor.predict(images, prompt.text, max_new_tokens=mnt,
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
    preds = [done[i]["prediction"] for i in range(n)]
    entry: dict = {"title": bench.title, "n_samples": n, "n_total": total,
                   "complete": n == total, "max_new_tokens": mnt,
                   "max_new_tokens_default": bench.max_new_tokens,
                   "data_files": [str(f) for f in table.files],
                   "predictions": str(path.relative_to(out_dir)), "notes": []}
    if bench.notes:
        entry["notes"].append(bench.notes)
    if mnt != bench.max_new_tokens:
        entry["notes"].append(f"max_new_tokens {mnt} (task default {bench.max_new_tokens}): "
                              "longer answers were cut, not comparable with published figures")
    if not entry["complete"]:
        entry["notes"].append(f"partial run: {n} of {total} samples (--limit)")
    per_sample = None
    if bench.score is not None:
        kw = {"timeout_s": scorer_timeout_s} if (
            scorer_timeout_s is not None and bench.external_scorer) else {}
        r = bench.score(docs, preds, **kw)
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
