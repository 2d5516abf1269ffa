"""Helpers of `llava-pack dedup`: benchmark image hashes, exclude lists and the contact sheet.

The dedup job itself is Rust (``llava_ov15.pack.dedup``); this module gives it the hashes of
evaluation images (read from the parquet layout ``python -m llava_ov15.eval`` uses, hashed with
the build's own phash from the stored image bytes) and reads its ``drop.txt`` back.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from llava_ov15 import _native


class AgainstError(ValueError):
    """``--against``/``--benchmarks`` cannot be used as given (the message says why)."""


def read_exclude(path: str | os.PathLike[str]) -> dict[str, str]:
    """``drop.txt`` (or any list of keys, one per line, optionally ``KEY<TAB>REASON``) → {key:
    reason}. Blank lines and ``#`` comments are ignored; a key is ``[A-Za-z0-9_+-]+``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise FileNotFoundError(f"--exclude {p}: {e.strerror or e}") from e
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r")
        if not line.strip() or line.startswith("#"):
            continue
        key, _, reason = line.partition("\t")
        key = key.strip()
        if not key or any(not (c.isalnum() or c in "_+-") for c in key):
            raise ValueError(f"--exclude {p} line {n}: {key!r} is not a sample key")
        out[key] = reason.strip() or "excluded"
    return out


def _raw_cells(table, column: str) -> Iterable[tuple[int, bytes | None]]:
    """(row, encoded image bytes) of a plain ParquetTable, read one row group at a time without
    decoding; other tables (custom loaders) fall back to decoding and re-encoding as PNG."""
    import pyarrow.parquet as pq

    from llava_ov15.eval.data import ParquetTable, decode_image

    if type(table) is not ParquetTable:
        for i in range(len(table)):
            im = table.image(i, column)
            if im is None:
                yield i, None
                continue
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            yield i, buf.getvalue()
        return
    row = 0
    for fi, f in enumerate(table.files):
        pf = pq.ParquetFile(f)
        has = column in pf.schema_arrow.names
        for g, (a, b) in enumerate(table._meta[fi]):
            cells = pf.read_row_group(g, columns=[column]).column(0).to_pylist() if has else []
            for r in range(b - a):
                cell = cells[r] if has else None
                data = cell.get("bytes") if isinstance(cell, dict) else cell
                if data is None and isinstance(cell, dict) and cell.get("path"):
                    im = decode_image(cell, f"{f} row {a + r} column {column!r}")
                    buf = io.BytesIO()
                    im.save(buf, format="PNG")
                    data = buf.getvalue()
                yield row, data
                row += 1


def benchmark_hashes(data_dir: str | os.PathLike[str], benchmarks: Sequence[str], *,
                     mode: str = "fast", log=None) -> list[tuple[int, str, int]]:
    """``(phash, benchmark, row)`` of every image of ``benchmarks`` under ``data_dir``."""
    from llava_ov15.eval import benchmarks as registry
    from llava_ov15.eval.data import DataError

    out: list[tuple[int, str, int]] = []
    for name in benchmarks:
        try:
            b = registry.get(name)
        except KeyError as e:
            raise AgainstError(str(e.args[0])) from None
        try:
            table = b.load(Path(data_dir))
        except DataError as e:
            raise AgainstError(f"--against {data_dir} --benchmarks {name}: {e}") from None
        rows: list[int] = []
        blobs: list[bytes] = []
        for column in b.image_columns:
            for row, data in _raw_cells(table, column.rstrip("?")):
                if data is not None:
                    rows.append(row)
                    blobs.append(bytes(data))
        hashes, errors = _native.phash_images(blobs, mode)
        bad = [(r, e) for r, e in zip(rows, errors, strict=True) if e is not None]
        out.extend((int(h), name, r) for h, r, e in zip(hashes, rows, errors, strict=True)
                   if e is None)
        if log is not None:
            msg = f"{name}: hashed {len(blobs) - len(bad)} images of {len(table)} rows"
            if bad:
                msg += f"; {len(bad)} undecodable (first: row {bad[0][0]}: {bad[0][1]})"
            log(msg)
    return out


def build_phash_mode(shards: str | os.PathLike[str]) -> str:
    """The phash mode a build used (``fast`` when its manifest does not say)."""
    try:
        m = json.loads((Path(shards) / "manifest.json").read_text())
    except (OSError, ValueError):
        return "fast"
    mode = (m.get("options") or {}).get("phash", "fast")
    return mode if mode in ("fast", "exact") else "fast"


def benchmark_images(data_dir: str | os.PathLike[str],
                     wanted: Iterable[tuple[str, int]]) -> dict[tuple[str, int], bytes]:
    """Encoded bytes of the benchmark rows in ``wanted`` (first image column with data)."""
    from llava_ov15.eval import benchmarks as registry

    want: dict[str, set[int]] = {}
    for name, row in wanted:
        want.setdefault(name, set()).add(int(row))
    out: dict[tuple[str, int], bytes] = {}
    for name, rows in want.items():
        b = registry.get(name)
        table = b.load(Path(data_dir))
        for column in b.image_columns:
            for row, data in _raw_cells(table, column.rstrip("?")):
                if row in rows and data is not None and (name, row) not in out:
                    out[(name, row)] = bytes(data)
    return out


def contact_sheet(shards: str | os.PathLike[str], dedup_dir: str | os.PathLike[str],
                  output: str | os.PathLike[str] | None = None, *, clusters: int = 12,
                  thumb: int = 96, per_row: int = 8, contaminated: int = 8,
                  references: dict[tuple[str, int], bytes] | None = None) -> Path | None:
    """PNG of the largest clusters (one row each, keeper first with a green frame, dropped
    members with red) and of up to ``contaminated`` contaminated samples (training image in
    red, then the benchmark image from ``references`` in blue), so a person can judge the
    threshold by eye. Returns its path, or None when there is nothing to show."""
    from PIL import Image, ImageDraw

    d = Path(dedup_dir)
    rows = [json.loads(line) for line in (d / "clusters.jsonl").read_text().splitlines() if line]
    contam = [json.loads(line) for line in
              (d / "contamination.jsonl").read_text().splitlines() if line][:contaminated]
    if not rows and not contam:
        return None
    rows.sort(key=lambda c: (-c["size"], c["cluster"]))
    rows = rows[:clusters]
    reader = _native.ShardReader(os.fspath(shards))
    height = (len(rows) + len(contam)) * (thumb + 4) + 4
    cols = max([min(per_row, c["size"]) for c in rows] + [2 if contam else 1])
    sheet = Image.new("RGB", (cols * (thumb + 4) + 4, height), "white")
    draw = ImageDraw.Draw(sheet)

    def put(im, x: int, y: int, colour, label: str) -> None:
        if im is None:
            return
        im.thumbnail((thumb, thumb))
        ox, oy = 4 + x * (thumb + 4), 4 + y * (thumb + 4)
        sheet.paste(im, (ox, oy))
        draw.rectangle([ox - 2, oy - 2, ox + thumb + 1, oy + thumb + 1], outline=colour, width=2)
        draw.text((ox + 2, oy + thumb - 12), label, fill=colour)

    for y, c in enumerate(rows):
        members = sorted(c["members"], key=lambda m: (not m["kept"], m["distance"]))[:per_row]
        for x, m in enumerate(members):
            colour = (0, 170, 0) if m["kept"] else (200, 0, 0)
            put(_member_image(reader, m), x, y, colour, f"d={m['distance']}")
    for k, r in enumerate(contam):
        y = len(rows) + k
        put(_member_image(reader, r), 0, y, (200, 0, 0), f"d={r['distance']}")
        ref = (references or {}).get((r["benchmark"], r["row"]))
        if ref is not None:
            with contextlib.suppress(Exception):
                put(Image.open(io.BytesIO(ref)).convert("RGB"), 1, y, (0, 0, 200),
                    f"{r['benchmark']} {r['row']}")
    out = Path(output) if output is not None else d / "contact_sheet.png"
    tmp = out.with_name(out.name + ".tmp")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, out)
    return out


def _member_image(reader, member):
    """The member's image (``index`` is the sample's position in the build), or None."""
    from PIL import Image

    try:
        sample = reader.sample(member["index"])
        if sample["key"] != member["key"]:
            return None  # not the build this dedup output was made from
        data = sample["images"][member["image"]]
        return Image.open(io.BytesIO(np.asarray(data).tobytes())).convert("RGB")
    except Exception:  # noqa: BLE001 - a sheet of thumbnails skips what it cannot show
        return None
