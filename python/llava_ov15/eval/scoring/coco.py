"""COCO caption metrics through pycocoevalcap (the official COCO caption evaluation code).

PTB tokenization (Stanford CoreNLP 3.4.1, needs ``java``), then BLEU-1..4 (corpus, "closest"
reference length), METEOR 1.5 (Java), ROUGE-L (beta 1.2) and CIDEr-D (sigma 6, document
frequencies from the evaluated references). SPICE is left out (needs Java 8/11 and a download).
Scores are returned on pycocoevalcap's own scale (fractions; CIDEr is already x10 internally,
typically ~1.0); ``CIDEr_x100`` etc. are the usual "percent" presentation. Captions are sent as
one line each (control characters -> space) to a child process with a time limit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
# Seconds the Java scorers may take (5,000 val images take about a minute on one core).
DEFAULT_TIMEOUT_S = 900.0
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def image_id_of(doc: dict) -> int:
    """lmms-lab COCO-Caption2017: ``question_id`` is the file name, e.g. "000000397133.jpg"."""
    return int(str(doc["question_id"]).split("_")[-1].split(".")[0])


def build_inputs(docs: Sequence[dict], preds: Sequence[str]) -> tuple[dict, dict]:
    """gts/res in pycocoevalcap's pre-tokenization format: {image_id: [{"caption": str}, ...]}.
    A repeated image keeps the first prediction (each COCO image is evaluated once)."""
    gts: dict[int, list[dict]] = {}
    res: dict[int, list[dict]] = {}
    for d, p in zip(docs, preds, strict=True):
        iid = image_id_of(d)
        if iid in res:
            continue
        res[iid] = [{"caption": p}]
        gts[iid] = [{"caption": c} for c in d["answer"]]
    return gts, res


class CocoScoringError(RuntimeError):
    """The external COCO scorers failed or did not finish in time (the message says which)."""


def sanitize_caption(text: str) -> str:
    """One line of plain text per caption. The PTB tokenizer is fed one caption per line and
    METEOR one request per line: a CR, a Unicode line separator or another control character
    in a caption splits it, shifting every later caption onto the wrong image, or leaves METEOR
    waiting for a line that never comes. Each run of them becomes one space."""
    return _CONTROL.sub(" ", text)


def compute_coco_metrics(gts: dict, res: dict, metrics: Sequence[str] = METRICS, *,
                         timeout_s: float | None = None,
                         command: Sequence[str] | None = None) -> dict:
    """Tokenize and score exactly as pycocoevalcap's COCOEvalCap.evaluate does (minus SPICE),
    in a child process (``_coco_worker.py``) stopped - with its Java processes - after
    ``timeout_s`` seconds (default ``DEFAULT_TIMEOUT_S``). ``command`` replaces the worker's
    command line (tests)."""
    if command is None:
        command = _worker_command()
    timeout = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
    req = {"gts": [[k, [sanitize_caption(c["caption"]) for c in v]] for k, v in gts.items()],
           "res": [[k, [sanitize_caption(c["caption"]) for c in v]] for k, v in res.items()],
           "metrics": list(metrics)}
    # A session of its own, so that a timeout can stop the Java processes the worker started.
    p = subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(json.dumps(req).encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(p)
        raise CocoScoringError(
            f"COCO caption scoring (pycocoevalcap: Java PTB tokenizer, METEOR) did not finish "
            f"within {timeout:g} s and was stopped; raise --scorer-timeout for large runs, or "
            "check that `java -version` works") from None
    except BaseException:
        _kill_group(p)
        raise
    if p.returncode != 0:
        tail = " | ".join(err.decode(errors="replace").strip().splitlines()[-3:])
        raise CocoScoringError(f"COCO caption scoring failed (exit {p.returncode}): {tail}")
    try:
        r = json.loads(out)
    except ValueError:
        raise CocoScoringError("COCO caption scoring returned no result") from None
    return {"metrics": {k: r["metrics"][k] for k in METRICS if k in r["metrics"]},
            "per_image": r["per_image"], "image_ids": r["image_ids"]}


def _worker_command() -> list[str]:
    if shutil.which("java") is None:
        raise CocoScoringError("COCO caption scoring needs Java on PATH (PTB tokenizer, METEOR)")
    return [sys.executable, str(Path(__file__).with_name("_coco_worker.py"))]


def _kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    p.communicate()


def score_coco(docs: Sequence[dict], preds: Sequence[str], *,
               timeout_s: float | None = None) -> dict:
    gts, res = build_inputs(docs, preds)
    r = compute_coco_metrics(gts, res, timeout_s=timeout_s)
    m = dict(r["metrics"])
    m.update({f"{k}_x100": v * 100.0 for k, v in r["metrics"].items()})
    cider = dict(zip(r["image_ids"], r["per_image"]["CIDEr"], strict=True))
    per = [cider.get(image_id_of(d), 0.0) * 100.0 for d in docs]
    return {"metrics": m, "breakdowns": {}, "per_sample": per}


def coco_results_file(docs: Sequence[dict], preds: Sequence[str]) -> list[dict]:
    """The COCO results-file format ({"image_id", "caption"}) for the evaluation server."""
    _, res = build_inputs(docs, preds)
    return [{"image_id": k, "caption": v[0]["caption"]} for k, v in res.items()]
