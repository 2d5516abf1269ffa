"""Supported benchmarks (see docs/eval.md for data layout, prompts and scoring)."""

from . import caption, mcq, vqa, yesno  # noqa: F401 - registration side effects
from .base import REGISTRY, Benchmark, Prompt

__all__ = ["REGISTRY", "Benchmark", "Prompt", "get"]


def get(name: str) -> Benchmark:
    if name not in REGISTRY:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]
