"""Benchmark descriptions: where the data live, how a prompt is built, how it is scored."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..data import DataError, ParquetTable, find_files

# lmms-eval's shared post-prompts (the `default` lmms_eval_specific_kwargs of each task)
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
LETTER_ANSWER = "\nAnswer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class Prompt:
    """What the model sees. ``text`` is the whole user text (images go before it); ``content``,
    when set, is the interleaved form: strings and indices into ``images``."""

    text: str
    images: tuple[str, ...] = ("image",)     # image columns of the row, in order
    content: tuple[str | int, ...] | None = None


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    hf_repo: str                              # the lmms-lab copy whose layout we read
    folder: str                               # default folder under --data-dir
    patterns: tuple[str, ...]                 # globs under the folder, first match wins
    required: tuple[str, ...]                 # columns that must exist
    max_new_tokens: int
    build_prompt: Callable[[dict], Prompt]
    score: Callable[[Sequence[dict], Sequence[str]], dict] | None
    headline: str | None = None               # metric shown in summaries / charts
    headline_max: float = 100.0
    image_columns: tuple[str, ...] = ("image",)
    until: tuple[str, ...] = ()
    submission: Callable[[Sequence[dict], Sequence[str]], list] | None = None
    submission_file: str | None = None
    key: Callable[[dict], str] = field(default=lambda d: "")
    breakdown: str | None = None              # breakdown charted per category
    loader: Callable[[Benchmark, Path], ParquetTable] | None = None
    notes: str = ""
    # The scorer runs external programs (Java) and takes ``timeout_s=`` (--scorer-timeout).
    external_scorer: bool = False

    def load(self, data_dir: Path) -> ParquetTable:
        root = Path(data_dir) / self.folder
        if self.loader is not None:
            return self.loader(self, root)
        files = find_files(root, self.patterns)
        table = ParquetTable(files, self.required, self.image_columns)
        if len(table) == 0:
            raise DataError(f"{self.name}: {', '.join(map(str, files))} contain no rows")
        return table


REGISTRY: dict[str, Benchmark] = {}


def register(b: Benchmark) -> Benchmark:
    if b.name in REGISTRY:
        raise ValueError(f"duplicate benchmark {b.name}")
    REGISTRY[b.name] = b
    return b


def patterns(*subpaths: str) -> tuple[str, ...]:
    """HF snapshot layout first, then the same file names directly in the folder."""
    out = list(subpaths)
    out += [Path(p).name for p in subpaths if "/" in p]
    return tuple(out)


def is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)
