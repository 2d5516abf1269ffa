"""TEST-ONLY predictors for smoke runs and the test suite. They do not look at a model and their
numbers mean nothing; select them with ``--model dummy:echo`` / ``dummy:hash``.

* ``echo``: the first line of the prompt, cut to ``max_new_tokens`` words.
* ``hash``: a deterministic pick (from a SHA-256 of the prompt and the image pixels) among
  typical answers - yes/no, option letters in several spellings, small numbers, short phrases -
  so that every scorer sees a mix of right, wrong and unresolved answers.
* ``yes``: always "Yes".
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from PIL import Image

_POOL = ("Yes", "No", "yes.", "A", "B", "C", "(D)", "B. second", "2", "two", "1,000", "10%",
         "a cat", "The answer is C", "I am not sure", "red", "3.5", "A dog on a bench.",
         "A small red cat sitting on a table.", "hello world")


class DummyPredictor:
    def __init__(self, mode: str):
        if mode not in ("echo", "hash", "yes"):
            raise ValueError(f"unknown dummy predictor {mode!r} (echo, hash, yes)")
        self.mode = mode
        self.calls = 0

    def info(self) -> dict:
        return {"class": "DummyPredictor", "mode": self.mode, "test_only": True}

    def predict(self, images: Sequence[Image.Image], prompt: str, *, max_new_tokens: int,
                content: Sequence[str | int] | None = None) -> str:
        self.calls += 1
        if self.mode == "yes":
            return "Yes"
        if self.mode == "echo":
            return " ".join(prompt.splitlines()[0].split()[:max_new_tokens]) if prompt else ""
        h = hashlib.sha256(prompt.encode())
        for im in images:
            h.update(im.tobytes())
        return _POOL[int.from_bytes(h.digest()[:4], "big") % len(_POOL)]


def make_dummy(mode: str) -> DummyPredictor:
    return DummyPredictor(mode)


# --------------------------------------------------------------------------------------------
# Synthetic benchmark files in the lmms-lab layouts (same folders, file names and columns).
# --------------------------------------------------------------------------------------------

def _png(seed: int, size: tuple[int, int] = (40, 32)) -> dict:
    import io

    import numpy as np

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": f"img{seed}.png"}


def _write(path, rows: list[dict], files: int = 1, row_group_size: int = 3) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    per = -(-len(rows) // files)
    for k in range(files):
        part = table.slice(k * per, per)
        name = path.name.replace("XXXXX", f"{k:05d}").replace("NNNNN", f"{files:05d}")
        pq.write_table(part, path.parent / name, row_group_size=row_group_size)


def write_synthetic_benchmarks(root, n: int = 6) -> dict[str, int]:
    """Write tiny benchmark files for every supported benchmark under ``root``; returns rows per
    benchmark. Contents are random but well-formed (answers, categories, option rotations)."""
    from pathlib import Path

    root = Path(root)
    counts: dict[str, int] = {}
    rows: list[dict]
    cats = ["existence", "count", "OCR", "code_reasoning", "text_translation"]
    rows = []
    for i in range(n):
        img = _png(100 + i)
        for j, ans in enumerate(("Yes", "No")):
            rows.append({"question_id": f"{cats[i % 5]}/{i:04d}.png", "image": img,
                         "question": f"Is there object {i}-{j}? Please answer yes or no.",
                         "answer": ans, "category": cats[i % 5]})
    _write(root / "MME/data/test-XXXXX-of-NNNNN.parquet", rows, files=2)
    counts["mme"] = len(rows)

    for lang in ("en", "cn"):
        for split in ("dev", "test"):
            rows = []
            for q in range(n):
                opts = [f"option {q}-{k}" for k in range(3)]
                for r in range(3):  # circular rotations
                    rot = opts[r:] + opts[:r]
                    ans = "ABC"[(q - r) % 3]
                    rows.append({"index": q + r * 1_000_000, "question": f"Question {q}?",
                                 "hint": None if q % 2 else f"Hint {q}.", "A": rot[0],
                                 "B": rot[1], "C": rot[2], "D": None,
                                 "answer": ans if split == "dev" else None,
                                 "category": f"cat{q % 2}", "image": _png(200 + q),
                                 "source": "synthetic", "L2-category": f"l2_{q % 3}",
                                 "comment": None, "split": split})
            _write(root / f"MMBench/{lang}/{split}-XXXXX-of-NNNNN.parquet", rows)
            counts[f"mmbench_{lang}_{split}"] = len(rows)

    for split, name in (("validation", "vqav2_val"), ("testdev", "vqav2_testdev")):
        rows = []
        for i in range(n):
            base = ["yes", "no", "2", "red"][i % 4]
            answers = [base] * 7 + ["two", "1,000", "the cat"]
            rows.append({"question_type": ["is the", "how many"][i % 2],
                         "multiple_choice_answer": base,
                         "answers": [{"answer": a, "answer_confidence": "yes",
                                      "answer_id": k + 1} for k, a in enumerate(answers)],
                         "image_id": 300 + i, "answer_type": ["yes/no", "number", "other"][i % 3],
                         "question_id": 3000 + i, "question": f"What about {i}?",
                         "image": _png(300 + i)})
        _write(root / f"VQAv2/data/{split}-XXXXX-of-NNNNN.parquet", rows, files=2)
        counts[name] = len(rows)

    caps = ["A dog on a bench.", "A small red cat sitting on a table.", "A man riding a horse.",
            "Two people walking in the park.", "A plate of food on a table."]
    rows = [{"question_id": f"{400 + i:012d}.jpg", "image": _png(400 + i),
             "question": "Please carefully observe the image and come up with a caption.",
             "answer": [caps[(i + k) % 5] for k in range(5)], "id": 400 + i,
             "license": 1, "file_name": f"{400 + i:012d}.jpg", "coco_url": "", "height": 32,
             "width": 40, "date_captured": ""} for i in range(n)]
    _write(root / "COCO-Caption2017/data/val-XXXXX-of-NNNNN.parquet", rows)
    counts["coco2017_cap_val"] = len(rows)

    rows = [{"id": str(i), "question_id": str(500 + i), "question": f"Is there a cat {i}?",
             "answer": ["yes", "no"][i % 2], "image_source": "x", "image": _png(500 + i),
             "category": ["adversarial", "popular", "random"][i % 3]} for i in range(n)]
    _write(root / "POPE/data/test-XXXXX-of-NNNNN.parquet", rows)
    counts["pope"] = len(rows)

    rows = [{"id": str(600 + i), "imageId": f"n{i % 3}", "question": f"Which side {i}?",
             "answer": ["left", "yes", "red"][i % 3], "fullAnswer": "x"} for i in range(n)]
    _write(root / "GQA/testdev_balanced_instructions/testdev-XXXXX-of-NNNNN.parquet", rows)
    rows = [{"id": f"n{k}", "image": _png(600 + k)} for k in range(3)]
    _write(root / "GQA/testdev_balanced_images/testdev-XXXXX-of-NNNNN.parquet", rows)
    counts["gqa"] = n

    rows = [{"image_id": f"t{i}", "question_id": 700 + i, "question": f"what brand is {i}?",
             "image": _png(700 + i), "answers": ["coca-cola"] * 8 + ["yes", "2"],
             "ocr_tokens": ["coca"]} for i in range(n)]
    _write(root / "textvqa/data/validation-XXXXX-of-NNNNN.parquet", rows)
    counts["textvqa_val"] = n

    rows = [{"questionId": str(800 + i), "question": f"What is the date {i}?",
             "question_types": ["form"], "image": _png(800 + i), "docId": i,
             "ucsf_document_id": "x", "ucsf_document_page_no": "1",
             "answers": ["hello world", "C"], "data_split": "val"} for i in range(n)]
    _write(root / "DocVQA/DocVQA/validation-XXXXX-of-NNNNN.parquet", rows)
    counts["docvqa_val"] = n
    rows = [{"questionId": str(850 + i), "question": f"How many {i}?", "answers": ["2", "two"],
             "answer_type": ["single span"], "image": _png(850 + i), "image_url": "",
             "operation/reasoning": [], "ocr": "", "data_split": "val"} for i in range(n)]
    _write(root / "DocVQA/InfographicVQA/validation-XXXXX-of-NNNNN.parquet", rows)
    counts["infovqa_val"] = n

    rows = [{"type": ["human_test", "augmented_test"][i % 2], "question": f"Value {i}?",
             "answer": ["10", "Yes", "2"][i % 3], "image": _png(900 + i)} for i in range(n)]
    _write(root / "ChartQA/data/test-XXXXX-of-NNNNN.parquet", rows)
    counts["chartqa"] = n

    rows = [{"dataset": ["IIIT5K", "HME100k"][i % 2], "question": "What is written?",
             "question_type": ["Regular Text Recognition",
                               "Handwritten Mathematical Expression Recognition"][i % 2],
             "answer": ["hello", "x^2"][i % 2:i % 2 + 1], "image": _png(1000 + i)}
            for i in range(n)]
    _write(root / "OCRBench/data/test-XXXXX-of-NNNNN.parquet", rows)
    counts["ocrbench"] = n

    rows = [{"question": f"Which label {i}?", "options": ["alpha", "beta", "gamma", "delta"],
             "answer": str(i % 4), "image": _png(1100 + i)} for i in range(n)]
    _write(root / "ai2d/data/test-XXXXX-of-NNNNN.parquet", rows)
    counts["ai2d"] = n

    rows = [{"image": _png(1200 + i), "question": f"Which is a mammal {i}?",
             "choices": ["cat", "trout", "frog"], "answer": i % 3,
             "hint": "" if i % 2 else "Animals.", "task": "closed choice", "grade": "grade2",
             "subject": "natural science", "topic": "biology", "category": "x", "skill": "y",
             "lecture": "", "solution": ""} for i in range(n)]
    _write(root / "ScienceQA/ScienceQA-IMG/test-XXXXX-of-NNNNN.parquet", rows)
    counts["scienceqa_img"] = n

    subjects = ["Math", "Art", "Physics"]
    rows = []
    for i in range(n):
        mc = i % 3 != 2
        row = {"id": f"validation_{subjects[i % 3]}_{i + 1}",
               "question": f"<image 1> What is shown {i}?" + (" Compare <image 2>." if i % 2
                                                             else ""),
               "options": str(["red", "green", "blue", "black"]) if mc else "[]",
               "explanation": "", "img_type": "['Photos']",
               "answer": "ABCD"[i % 4] if mc else "42",
               "topic_difficulty": "Easy",
               "question_type": "multiple-choice" if mc else "open", "subfield": "x"}
        for k in range(1, 8):
            row[f"image_{k}"] = _png(1300 + 10 * i + k) if (k == 1 or (k == 2 and i % 2)) \
                else None
        rows.append(row)
    _write(root / "MMMU/data/validation-XXXXX-of-NNNNN.parquet", rows)
    counts["mmmu_val"] = n
    return counts
