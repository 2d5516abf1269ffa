"""Child process of ``coco.compute_coco_metrics``: scores one request with pycocoevalcap.

Run as a script (``python _coco_worker.py``), so it needs nothing but pycocoevalcap: the parent
sends ``{"gts": [[image_id, [caption, ...]], ...], "res": [...], "metrics": [...]}`` on stdin and
reads one JSON object from stdout. It runs in a process of its own so that the parent can stop
it - and the Java tokenizer/METEOR processes it starts - when it does not finish in time.
"""

from __future__ import annotations

import json
import sys


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


def score(gts: dict, res: dict, metrics) -> dict:
    """Tokenize and score exactly as pycocoevalcap's COCOEvalCap.evaluate does (minus SPICE)."""
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
        s, scores = Bleu(4).compute_score(gts_t, res_t, verbose=0)
        for n in range(4):
            out[f"Bleu_{n + 1}"] = float(s[n])
        per_image["Bleu_4"] = [float(x) for x in scores[3]]
    for name, cls in (("METEOR", Meteor), ("ROUGE_L", Rouge), ("CIDEr", Cider)):
        if name not in want:
            continue
        scorer = cls()
        try:
            s, scores = scorer.compute_score(gts_t, res_t)
        finally:
            if name == "METEOR":
                _close_meteor(scorer)
        out[name] = float(s)
        per_image[name] = [float(x) for x in scores]
    return {"metrics": out, "per_image": per_image, "image_ids": list(gts_t)}


def main() -> int:
    req = json.load(sys.stdin)
    gts = {k: [{"caption": c} for c in caps] for k, caps in req["gts"]}
    res = {k: [{"caption": c} for c in caps] for k, caps in req["res"]}
    # pycocoevalcap prints progress on stdout; only our JSON may go there.
    real_stdout, sys.stdout = sys.stdout, sys.stderr
    r = score(gts, res, req["metrics"])
    real_stdout.write(json.dumps(r))
    real_stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
