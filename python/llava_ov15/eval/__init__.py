"""Evaluation: benchmarks with official scoring, resumable runs, results.json + report.html.

Entry point: ``python -m llava_ov15.eval`` (see docs/eval.md). Scorers in
:mod:`llava_ov15.eval.scoring` are pure functions usable without a model.
"""

from .predictor import Predictor, load_predictor

__all__ = ["Predictor", "load_predictor"]
