"""COCO caption metrics through pycocoevalcap (the official COCO caption evaluation code).

PTB tokenization (Stanford CoreNLP 3.4.1, needs ``java``), then BLEU-1..4 (corpus, "closest"
reference length), METEOR 1.5 (Java), ROUGE-L (beta 1.2) and CIDEr-D (sigma 6, document
frequencies from the evaluated references). SPICE is left out (needs Java 8/11 and a download).
Scores are returned on pycocoevalcap's own scale (fractions; CIDEr is already x10 internally,
typically ~1.0); ``CIDEr_x100`` etc. are the usual "percent" presentation.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


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


def compute_coco_metrics(gts: dict, res: dict, metrics: Sequence[str] = METRICS) -> dict:
    """Tokenize and score exactly as pycocoevalcap's COCOEvalCap.evaluate does (minus SPICE)."""
    if shutil.which("java") is None:
        raise RuntimeError("COCO caption scoring needs Java on PATH (PTB tokenizer, METEOR)")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts_t, res_t = tok.tokenize(gts), tok.tokenize(res)
    out: dict[str, float] = {}
    per_image: dict[str, list[float]] = {}
    want = set(metrics)
    if want & {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"}:
        score, scores = Bleu(4).compute_score(gts_t, res_t, verbose=0)
        for n in range(4):
            out[f"Bleu_{n + 1}"] = float(score[n])
        per_image["Bleu_4"] = [float(s) for s in scores[3]]
    for name, cls in (("METEOR", Meteor), ("ROUGE_L", Rouge), ("CIDEr", Cider)):
        if name not in want:
            continue
        scorer = cls()
        try:
            score, scores = scorer.compute_score(gts_t, res_t)
        finally:
            if name == "METEOR":
                _close_meteor(scorer)
        out[name] = float(score)
        per_image[name] = [float(s) for s in scores]
    return {"metrics": {k: out[k] for k in METRICS if k in out}, "per_image": per_image,
            "image_ids": list(gts_t.keys())}


def _close_meteor(m) -> None:
    p = getattr(m, "meteor_p", None)
    if p is None:
        return
    with m.lock:
        for stream in (p.stdin, p.stdout, p.stderr):
            try:
                stream.close()
            except OSError:
                pass
        p.kill()
        p.wait()


def score_coco(docs: Sequence[dict], preds: Sequence[str]) -> dict:
    gts, res = build_inputs(docs, preds)
    r = compute_coco_metrics(gts, res)
    m = dict(r["metrics"])
    m.update({f"{k}_x100": v * 100.0 for k, v in r["metrics"].items()})
    cider = dict(zip(r["image_ids"], r["per_image"]["CIDEr"], strict=True))
    per = [cider.get(image_id_of(d), 0.0) * 100.0 for d in docs]
    return {"metrics": m, "breakdowns": {}, "per_sample": per}


def coco_results_file(docs: Sequence[dict], preds: Sequence[str]) -> list[dict]:
    """The COCO results-file format ({"image_id", "caption"}) for the evaluation server."""
    _, res = build_inputs(docs, preds)
    return [{"image_id": k, "caption": v[0]["caption"]} for k, v in res.items()]
