"""Published lmms-eval figures (REFERENCE §5: LLaVA-OneVision-1.5 tech report, arXiv 2509.23661).

Only comparable where the benchmark (and split) matches. ``match`` says how well: "exact" - same
benchmark and split; "split-unstated" - the source names the benchmark but not the split/variant;
"other-split" - published on a split we can only write a submission for (shown for orientation).
The MME / VQAv2 / COCO figures quoted in the article have no public source and are not listed.
"""

from __future__ import annotations

MODELS = ("LLaVA-OV-1.5-8B", "Qwen2.5-VL-7B")
SOURCE = "LLaVA-OneVision-1.5 tech report (arXiv 2509.23661), lmms-eval"

_FIGURES = {  # published name -> (LLaVA-OV-1.5-8B, Qwen2.5-VL-7B)
    "MMBench-en test": (84.1, 83.4),
    "MMMU val": (55.4, 51.3),
    "AI2D": (84.2, 82.6),
    "DocVQA": (95.0, 94.9),
    "ChartQA": (86.5, 84.1),
    "OCRBench": (82.9, 84.2),
    "MMStar": (67.7, 62.5),
    "ScienceQA": (95.0, 88.8),
}

# our benchmark -> (published name, match)
_MATCH = {
    "mmbench_en_test": ("MMBench-en test", "exact"),
    "mmbench_en_dev": ("MMBench-en test", "other-split"),
    "mmmu_val": ("MMMU val", "exact"),
    "ai2d": ("AI2D", "exact"),
    "chartqa": ("ChartQA", "exact"),
    "ocrbench": ("OCRBench", "exact"),
    "docvqa_val": ("DocVQA", "split-unstated"),
    "scienceqa_img": ("ScienceQA", "split-unstated"),
}


# Benchmarks the article quotes a figure for that no public source backs (see module docstring).
_UNSOURCED = ("mme", "vqav2_val", "vqav2_testdev", "coco2017_cap_val")


def absent_reason(benchmark: str) -> str:
    """Why the report shows no published figure for ``benchmark`` (a phrase for a table cell)."""
    if benchmark in _UNSOURCED:
        return "no published figure: the article's number has no public source"
    return "no published figure: not reported in the LLaVA-OV-1.5 tech report"


def published_for(benchmark: str) -> dict | None:
    """{"name", "match", "source", "scores": {model: value}} or None."""
    if benchmark not in _MATCH:
        return None
    name, match = _MATCH[benchmark]
    return {"name": name, "match": match, "source": SOURCE,
            "scores": dict(zip(MODELS, _FIGURES[name], strict=True))}
