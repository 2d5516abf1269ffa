"""A step's micro-batches: read on one rank per model-parallel group, capped, broadcast.

* Reading: only tensor-parallel rank 0 of the first pipeline stage of each data-parallel replica
  builds a data source and preprocesses (Megatron's pattern); the other TP ranks of its stage get
  the collated tensors by broadcast (shapes and dtypes first, then the tensors). With pipeline
  parallelism the reader sends the last stage what its loss needs (input_ids, labels,
  position_ids, cu_seqlens) and middle stages only what attention needs (position_ids,
  cu_seqlens); pixels never leave the first stage. Their TP rank 0 re-broadcasts to their TP
  group. Non-tensor fields (the rows' sample keys) stay on the reader.
* `data.max_image_tokens_per_step`: before collating, the largest images of a micro-batch whose
  merged vision tokens exceed the cap are shrunk (smart_resize to a smaller pixel budget, the
  patches resampled, the row's <|image_pad|> run shortened and the row re-padded) until it fits;
  samples are never dropped. `redo(cap)` rebuilds the last step's micro-batches from the same
  rows with another cap (the CUDA out-of-memory retry).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from llava_ov15.model.processor import MERGE_SIZE, MIN_PIXELS, PATCH_SIZE, smart_resize

from .data import IGNORE_INDEX, collate_rows

FACTOR = PATCH_SIZE * MERGE_SIZE  # pixels per merged token side (28)
KEYS = ("input_ids", "labels", "position_ids", "cu_seqlens", "pixel_values", "image_grid_thw")
LAST_STAGE_KEYS = ("input_ids", "labels", "position_ids", "cu_seqlens")
MIDDLE_STAGE_KEYS = ("position_ids", "cu_seqlens")
DTYPES = (torch.int64, torch.int32, torch.float32, torch.bfloat16, torch.float16)


# ---- image-token cap -----------------------------------------------------------------------
def unpatchify(pv: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """Inverse of `processor.patchify`: [gh·gw, C·p·p] -> [C, gh·p, gw·p]."""
    p, m = PATCH_SIZE, MERGE_SIZE
    c = pv.shape[1] // (p * p)
    x = pv.reshape(gh // m, gw // m, m, m, c, p, p).permute(4, 0, 2, 5, 1, 3, 6)
    return x.reshape(c, gh * p, gw * p)


def patchify(chw: torch.Tensor) -> torch.Tensor:
    p, m = PATCH_SIZE, MERGE_SIZE
    c, hh, ww = chw.shape
    gh, gw = hh // p, ww // p
    x = chw.reshape(c, gh // m, m, p, gw // m, m, p).permute(1, 4, 2, 5, 0, 3, 6)
    return x.reshape(gh * gw, c * p * p).contiguous()


def _tokens(grid: torch.Tensor) -> int:
    return int(grid[1] * grid[2]) // MERGE_SIZE**2


def plan_cap(grids: list[torch.Tensor], cap: int, min_pixels: int = MIN_PIXELS
             ) -> list[tuple[int, int] | None]:
    """New (grid_h, grid_w) in patches per image (None = unchanged) so that the merged tokens of
    all `grids` fit `cap`: repeatedly the largest image goes to the pixel budget that removes
    the excess (never under `min_pixels`); images already at the floor stay."""
    cur = [(int(g[1]), int(g[2])) for g in grids]
    new: list[tuple[int, int] | None] = [None] * len(grids)
    stuck: set[int] = set()
    floor = max(1, math.ceil(min_pixels / FACTOR**2))

    def tok(i: int) -> int:
        return cur[i][0] * cur[i][1] // MERGE_SIZE**2

    while sum(tok(i) for i in range(len(cur))) > cap:
        free = [i for i in range(len(cur)) if i not in stuck]
        if not free:
            break
        i = max(free, key=lambda j: (tok(j), -j))
        excess = sum(tok(j) for j in range(len(cur))) - cap
        h, w = cur[i][0] * PATCH_SIZE, cur[i][1] * PATCH_SIZE
        # the smallest budget >= what removes the excess whose result keeps min_pixels
        # (smart_resize's flooring can land under it for elongated images)
        for want in range(max(tok(i) - excess, floor), tok(i)):
            nh, nw = smart_resize(h, w, min_pixels=min(min_pixels, want * FACTOR**2),
                                  max_pixels=want * FACTOR**2)
            if nh * nw >= min_pixels:
                break
        else:
            nh, nw = h, w
        if nh * nw >= h * w:
            stuck.add(i)
            continue
        cur[i] = (nh // PATCH_SIZE, nw // PATCH_SIZE)
        new[i] = cur[i]
    return new


def _resize_image(pv: torch.Tensor, gh: int, gw: int, nh: int, nw: int) -> torch.Tensor:
    img = unpatchify(pv.float(), gh, gw)[None]
    out = F.interpolate(img, size=(nh * PATCH_SIZE, nw * PATCH_SIZE), mode="bicubic",
                        align_corners=False, antialias=True)[0]
    return patchify(out).to(pv.dtype)


def _shrink_row(row: dict[str, Any], new: list[tuple[int, int] | None], image_token: int,
                pad_id: int) -> dict[str, Any]:
    """Apply new grids to one row's images: resampled patches, shorter <|image_pad|> runs, the
    freed tokens appended as padding (the row keeps its length)."""
    ids, labels, grid = row["input_ids"], row["labels"], row["image_grid_thw"]
    starts = torch.tensor([0, *row["seq_lens"]]).cumsum(0).tolist()
    lens = list(row["seq_lens"])
    is_img = (ids == image_token).tolist()  # becomes None where a token is removed
    pvs, grids = [], []
    pos, pix, freed = 0, 0, 0
    for k, g in enumerate(grid):
        gh, gw = int(g[1]), int(g[2])
        n = gh * gw
        while not is_img[pos]:  # the start of image k's placeholder run
            pos += 1
        run = _tokens(g)
        pv = row["pixel_values"][pix:pix + n]
        if new[k] is None:
            pvs.append(pv)
            grids.append(g)
        else:
            nh, nw = new[k]
            pvs.append(_resize_image(pv, gh, gw, nh, nw))
            grids.append(torch.tensor([int(g[0]), nh, nw], dtype=g.dtype))
            cut = run - nh * nw // MERGE_SIZE**2
            if bool((labels[pos:pos + run] != IGNORE_INDEX).any()):
                raise ValueError("image placeholder tokens carry labels")
            doc = max(d for d in range(len(lens)) if starts[d] <= pos)
            lens[doc] -= cut
            freed += cut
            is_img[pos + run - cut:pos + run] = [None] * cut
        pix += n
        pos += run
    keep = torch.tensor([x is not None for x in is_img])
    ids, labels = ids[keep], labels[keep]
    if freed:
        last = len(lens) - 1
        tail = slice(int(sum(lens[:last])), None)
        if lens[last] > 0 and bool((ids[tail] == pad_id).all()) and \
                bool((labels[tail] == IGNORE_INDEX).all()):
            lens[last] += freed  # the row's padding sub-sample grows
        else:
            lens.append(freed)
        ids = torch.cat([ids, torch.full((freed,), pad_id, dtype=ids.dtype)])
        labels = torch.cat([labels, torch.full((freed,), IGNORE_INDEX, dtype=labels.dtype)])
    lens = [n for n in lens if n > 0]
    out = dict(row)
    out.update(input_ids=ids, labels=labels, seq_lens=lens,
               position_ids=torch.cat([torch.arange(n) for n in lens]),
               pixel_values=torch.cat(pvs) if pvs else row["pixel_values"],
               image_grid_thw=torch.stack(grids) if grids else grid)
    return out


def cap_image_tokens(rows: list[dict[str, Any]], cap: int | None, image_token: int, pad_id: int,
                     min_pixels: int = MIN_PIXELS) -> tuple[list[dict[str, Any]], int]:
    """One micro-batch's rows with at most `cap` merged vision tokens -> (rows, images shrunk)."""
    grids = [g for r in rows for g in r["image_grid_thw"]]
    if cap is None or sum(_tokens(g) for g in grids) <= cap:
        return rows, 0
    plan = plan_cap(grids, cap, min_pixels)
    out, k = [], 0
    for r in rows:
        n = len(r["image_grid_thw"])
        mine = plan[k:k + n]
        k += n
        out.append(_shrink_row(r, mine, image_token, pad_id) if any(mine) else r)
    return out, sum(x is not None for x in plan)


# ---- sharing a micro-batch across model-parallel ranks -------------------------------------
def _meta(batch: dict[str, Any] | None, keys: tuple[str, ...], device) -> torch.Tensor:
    """[len(keys), 4] int64: present, dtype index, dim 0, dim 1 (-1 for 1-D)."""
    m = torch.full((len(keys), 4), -1, dtype=torch.long, device=device)
    for i, k in enumerate(keys):
        t = batch.get(k) if batch is not None else None
        if torch.is_tensor(t):
            m[i, 0], m[i, 1] = 1, DTYPES.index(t.dtype)
            m[i, 2:2 + t.ndim] = torch.tensor(t.shape, dtype=torch.long)
    return m


def _empty(meta: torch.Tensor, keys: tuple[str, ...], device) -> dict[str, torch.Tensor]:
    out = {}
    for k, (present, dt, d0, d1) in zip(keys, meta.tolist(), strict=True):
        if present == 1:
            shape = (d0,) if d1 < 0 else (d0, d1)
            out[k] = torch.empty(shape, dtype=DTYPES[dt], device=device)
    return out


def broadcast_batch(batch: dict[str, Any] | None, src: int, group, device,
                    keys: tuple[str, ...] = KEYS) -> dict[str, Any]:
    """`batch` on global rank `src` -> the same tensors on every rank of `group`."""
    meta = _meta(batch, keys, device)
    dist.broadcast(meta, src, group=group)
    mine = dist.get_rank() == src
    out = dict(batch) if mine else _empty(meta, keys, device)
    for k in keys:
        if k in out and torch.is_tensor(out[k]):
            if mine:
                out[k] = out[k].to(device).contiguous()
            dist.broadcast(out[k], src, group=group)
    return out


def send_batch(batch: dict[str, Any], dst: int, keys: tuple[str, ...], device) -> None:
    sub = {k: batch[k] for k in keys}
    dist.send(_meta(sub, keys, device), dst)
    for k in keys:
        dist.send(sub[k].to(device).contiguous(), dst)


def recv_batch(src: int, keys: tuple[str, ...], device) -> dict[str, torch.Tensor]:
    meta = torch.empty((len(keys), 4), dtype=torch.long, device=device)
    dist.recv(meta, src)
    out = _empty(meta, keys, device)
    for k in keys:
        dist.recv(out[k], src)
    return out


class StepBatches:
    """The trainer's data: `next_step(n)` -> this rank's n micro-batches of the next step.

    `source` (a row stream, `data.BatchSource`) exists on reader ranks only (`is_reader`).
    `state_dict()` is the source's (None elsewhere: such ranks hold no data position)."""

    def __init__(self, source, *, device, image_token: int, pad_id: int,
                 cap: int | None = None, min_pixels: int | None = None):
        from megatron.core import parallel_state as ps

        self.source, self.device = source, device
        self.image_token, self.pad_id = image_token, pad_id
        self.cap, self.min_pixels = cap, min_pixels or MIN_PIXELS
        self.tp = ps.get_tensor_model_parallel_world_size()
        self.tp_src, self.tp_group = ps.get_tensor_model_parallel_src_rank(), \
            ps.get_tensor_model_parallel_group()
        self.pp_ranks = dist.get_process_group_ranks(ps.get_pipeline_model_parallel_group()) \
            if ps.get_pipeline_model_parallel_world_size() > 1 else [dist.get_rank()]
        self.stage = ps.get_pipeline_model_parallel_rank()
        self.tp_rank = ps.get_tensor_model_parallel_rank()
        self.rows_read = 0
        self.cap_hits = 0  # micro-batches shrunk to fit the cap (this run, this reader)
        self._rows: list[list[dict]] = []  # the last step's rows, for redo()

    @staticmethod
    def is_reader(tp_rank: int, pp_rank: int) -> bool:
        return tp_rank == 0 and pp_rank == 0

    def _collate(self, rows: list[dict], cap: int | None) -> tuple[dict, bool]:
        rows, shrunk = cap_image_tokens(rows, cap, self.image_token, self.pad_id,
                                        self.min_pixels)
        return collate_rows(rows), shrunk > 0

    def _share(self, batch: dict | None) -> dict:
        """The reader's micro-batch -> what this rank's stage needs, on this rank."""
        last = len(self.pp_ranks) - 1
        if self.tp_rank == 0 and len(self.pp_ranks) > 1:
            if self.stage == 0:
                for s in range(1, last + 1):
                    send_batch(batch, self.pp_ranks[s],
                               LAST_STAGE_KEYS if s == last else MIDDLE_STAGE_KEYS, self.device)
            else:
                batch = recv_batch(self.pp_ranks[0],
                                   LAST_STAGE_KEYS if self.stage == last else MIDDLE_STAGE_KEYS,
                                   self.device)
        if self.tp > 1:
            keys = KEYS if self.stage == 0 else \
                LAST_STAGE_KEYS if self.stage == last else MIDDLE_STAGE_KEYS
            batch = broadcast_batch(batch, self.tp_src, self.tp_group, self.device, keys)
        return batch

    def _build(self, cap: int | None) -> tuple[list[dict], int]:
        out, hits = [], 0
        for rows in self._rows:
            b, hit = self._collate(rows, cap) if self.source is not None else (None, False)
            hits += hit
            out.append(self._share(b))
        return out, hits

    def next_step(self, n_micro: int) -> list[dict]:
        if self.source is not None:
            self._rows = [[self.source.next_row() for _ in range(self.source.mbs)]
                          for _ in range(n_micro)]
            self.rows_read += n_micro * self.source.mbs
        else:
            self._rows = [[] for _ in range(n_micro)]
        out, hits = self._build(self.cap)
        self.cap_hits += hits
        self.last_hits = hits
        return out

    def lower_cap(self) -> int:
        """Half the configured cap, or half of the last step's largest micro-batch (OOM retry)."""
        most = max((sum(_tokens(g) for r in rows for g in r["image_grid_thw"])
                    for rows in self._rows), default=0)
        base = min(self.cap, most) if self.cap is not None else most
        return max(1, base // 2)

    def redo(self, cap: int | None) -> list[dict]:
        """The last step again, from the same rows, with `cap`."""
        out, hits = self._build(cap)
        self.cap_hits += hits
        self.last_hits = hits
        return out

    def record(self, step: int, keys: list, losses: list[float]) -> None:
        if self.source is not None and hasattr(self.source, "record"):
            self.source.record(step, keys, losses)

    def state_dict(self) -> dict[str, Any] | None:
        return self.source.state_dict() if self.source is not None else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.source is not None:
            self.source.load_state_dict(state)
