"""Local parquet tables in the layout of the lmms-lab Hugging Face dataset copies.

A table is the concatenation (sorted by path) of the parquet files matched by a glob under the
benchmark's folder. Non-image columns are read eagerly into dicts ("docs"); image columns (HF
``Image`` feature: struct {bytes, path}) are read lazily, one row group at a time.
"""

from __future__ import annotations

import glob
import io
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image


class DataError(RuntimeError):
    """A benchmark's data files are missing or malformed (the message names the file)."""


def find_files(root: Path, patterns: Sequence[str]) -> list[Path]:
    """Files of the first pattern that matches anything under ``root``."""
    for pat in patterns:
        hits = sorted(Path(p) for p in glob.glob(str(root / pat)) if Path(p).is_file())
        if hits:
            return hits
    tried = ", ".join(str(root / p) for p in patterns)
    raise DataError(f"no data files found; expected one of: {tried}")


class ParquetTable:
    """Rows of several parquet files: docs eagerly (without images), images on demand."""

    def __init__(self, files: Sequence[Path], required: Sequence[str],
                 image_columns: Sequence[str] = ()):
        self.files = list(files)
        self.image_columns = tuple(image_columns)
        self.docs: list[dict] = []
        self._loc: list[tuple[int, int]] = []   # (file index, row within file)
        self._meta = []
        for fi, f in enumerate(self.files):
            try:
                pf = pq.ParquetFile(f)
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types
                raise DataError(f"{f}: not a readable parquet file ({e})") from e
            names = set(pf.schema_arrow.names)
            missing = [c for c in required if c not in names]
            missing += [c for c in self.image_columns if c not in names and not c.endswith("?")]
            if missing:
                raise DataError(f"{f}: missing column(s) {missing}; has {sorted(names)}")
            cols = [c for c in pf.schema_arrow.names if c not in self._image_names()]
            try:
                table = pf.read(columns=cols)
            except Exception as e:  # noqa: BLE001
                raise DataError(f"{f}: cannot read ({e})") from e
            rows = table.to_pylist()
            self.docs.extend(rows)
            self._loc.extend((fi, r) for r in range(len(rows)))
            bounds = []
            start = 0
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                bounds.append((start, start + n))
                start += n
            self._meta.append(bounds)
        self._cache_key: tuple[int, int] | None = None
        self._cache = None

    def _image_names(self) -> set[str]:
        return {c.rstrip("?") for c in self.image_columns}

    def __len__(self) -> int:
        return len(self.docs)

    def image(self, i: int, column: str) -> Image.Image | None:
        """Decoded image of row ``i`` (None where the cell is null)."""
        fi, r = self._loc[i]
        g = next(k for k, (a, b) in enumerate(self._meta[fi]) if a <= r < b)
        if self._cache_key != (fi, g):
            f = self.files[fi]
            pf = pq.ParquetFile(f)
            cols = [c for c in self._image_names() if c in pf.schema_arrow.names]
            self._cache = pf.read_row_group(g, columns=cols).to_pydict()
            self._cache_key = (fi, g)
        col = self._cache.get(column)
        cell = None if col is None else col[r - self._meta[fi][g][0]]
        return decode_image(cell, f"{self.files[fi]} row {r} column {column!r}")


def decode_image(cell, where: str) -> Image.Image | None:
    if cell is None:
        return None
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if data is None and isinstance(cell, dict) and cell.get("path"):
        p = Path(cell["path"])
        if not p.is_file():
            raise DataError(f"{where}: image has no bytes and path {p} does not exist")
        data = p.read_bytes()
    if data is None:
        return None
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{where}: undecodable image ({e})") from e
    return im.convert("RGB")
