"""Batches for the trainer.

Packed rows (micro-batch 1 row = 1 pack): the sub-samples are laid end to end; positions
restart at 0 for each sub-sample and `cu_seqlens` / `max_seqlen` describe the boundaries for
varlen attention. Backends without varlen attention use `block_diagonal_causal_mask`.
Unpacked batches are right padded with an `attention_mask`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE_INDEX = -100
PAD_TOKEN_ID = 151643  # <|endoftext|>, Qwen's pad token


def _images(items: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    pv = [it["pixel_values"] for it in items if len(it["pixel_values"])]
    grid = [it["image_grid_thw"] for it in items if len(it["image_grid_thw"])]
    return (torch.cat(pv) if pv else torch.zeros(0, 588),
            torch.cat(grid) if grid else torch.zeros(0, 3, dtype=torch.long))


def collate_packed(items: Sequence[dict]) -> dict:
    """One row holding every sub-sample of `items` (usually one pack from `SampleProcessor`)."""
    seq_lens = [n for it in items for n in it["seq_lens"]]
    ids = torch.cat([it["input_ids"] for it in items])
    labels = torch.cat([it["labels"] for it in items])
    if sum(seq_lens) != len(ids):
        raise ValueError(f"seq_lens sum {sum(seq_lens)} != {len(ids)} tokens")
    positions = torch.cat([torch.arange(n) for n in seq_lens]) if seq_lens else torch.zeros(0)
    cu = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(seq_lens, dtype=torch.int32), 0)
    pv, grid = _images(items)
    return {"input_ids": ids[None], "labels": labels[None], "position_ids": positions.long()[None],
            "cu_seqlens": cu, "max_seqlen": max(seq_lens, default=0),
            "pixel_values": pv, "image_grid_thw": grid}


def collate_padded(items: Sequence[dict], pad_token_id: int = PAD_TOKEN_ID) -> dict:
    """Right-padded batch of unpacked samples (one sequence per item)."""
    n = max((len(it["input_ids"]) for it in items), default=0)
    ids = torch.full((len(items), n), pad_token_id, dtype=torch.long)
    labels = torch.full((len(items), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for i, it in enumerate(items):
        k = len(it["input_ids"])
        ids[i, :k], labels[i, :k], mask[i, :k] = it["input_ids"], it["labels"], 1
    positions = (torch.arange(n)[None] * mask).long()
    pv, grid = _images(items)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "position_ids": positions,
            "pixel_values": pv, "image_grid_thw": grid}


def block_diagonal_causal_mask(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """`[T, T]` bool, True where query `q` may attend to key `k`: same sub-sample and `k <= q`."""
    cu = cu_seqlens.long()
    t = int(cu[-1])
    seg = torch.bucketize(torch.arange(t), cu[1:], right=True)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    return causal & (seg[:, None] == seg[None, :])
