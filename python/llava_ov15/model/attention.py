"""Attention kernels: packed (varlen) attention and masked attention for cached decoding.

Packed sequences are described once per forward by a `Segments` object: every token of a
[B, T] batch carries a segment id, and tokens only attend within their own segment (block-diagonal,
optionally causal). On a GPU with flash-attn installed the same packing is handed to
`flash_attn_varlen_func` as cu_seqlens over the flattened tokens; elsewhere we use PyTorch SDPA
with an explicit boolean block-diagonal mask. Both give the same numbers within dtype tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # optional; only used for CUDA bf16/fp16 tensors
    from flash_attn import flash_attn_varlen_func as _flash_varlen
except Exception:  # pragma: no cover - not installed on CPU machines
    _flash_varlen = None

_BACKEND = {"name": "auto"}  # "auto" | "sdpa" | "flash"


def set_backend(name: str) -> None:
    """Force an attention backend ("auto", "sdpa" or "flash"); mainly for tests/benchmarks."""
    if name not in ("auto", "sdpa", "flash"):
        raise ValueError(name)
    if name == "flash" and _flash_varlen is None:
        raise RuntimeError("flash-attn is not installed")
    _BACKEND["name"] = name


@dataclass
class Segments:
    """Block-diagonal structure of a [B, T] batch.

    seg_ids[b, t] is a global segment index (segments never cross rows); cu_seqlens are the
    flash-attn style boundaries over the flattened B·T tokens.
    """

    seg_ids: torch.Tensor  # [B, T] int64
    cu_seqlens: torch.Tensor  # [S+1] int32
    max_seqlen: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.seg_ids.shape)

    @property
    def one_per_row(self) -> bool:
        """Each row is a single segment: plain (causal) attention needs no explicit mask."""
        return len(self.cu_seqlens) - 1 == self.seg_ids.shape[0]

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: torch.Tensor, batch: int, seqlen: int) -> Segments:
        """cu_seqlens over the flattened batch; must end at batch·seqlen and split at row ends."""
        cu = cu_seqlens.to(torch.int64).flatten()
        total = batch * seqlen
        if cu[0].item() != 0 or cu[-1].item() != total or bool((cu[1:] < cu[:-1]).any()):
            raise ValueError(f"cu_seqlens {cu.tolist()} do not cover {batch}x{seqlen} tokens")
        row_ends = torch.arange(1, batch + 1, device=cu.device) * seqlen
        if not bool(torch.isin(row_ends, cu).all()):
            raise ValueError("cu_seqlens segments must not cross batch rows")
        lens = cu[1:] - cu[:-1]
        keep = lens > 0  # tolerate repeated boundaries (empty segments)
        cu = torch.cat([cu[:1], cu[1:][keep]])
        lens = lens[keep]
        seg = torch.repeat_interleave(torch.arange(len(lens), device=cu.device), lens)
        return cls(seg.view(batch, seqlen), cu.to(torch.int32), int(lens.max().item()))

    @classmethod
    def from_position_ids(cls, position_ids: torch.Tensor) -> Segments:
        """A new segment starts wherever positions restart at 0 (and at every row start)."""
        b, t = position_ids.shape
        starts = position_ids == 0
        starts[:, 0] = True
        flat = starts.flatten()
        seg = torch.cumsum(flat.to(torch.int64), 0) - 1
        idx = torch.nonzero(flat).flatten()
        cu = torch.cat([idx, torch.tensor([b * t], device=idx.device)])
        max_len = int((cu[1:] - cu[:-1]).max().item())
        return cls(seg.view(b, t), cu.to(torch.int32), max_len)

    @classmethod
    def per_row(cls, batch: int, seqlen: int, device=None) -> Segments:
        cu = torch.arange(batch + 1, device=device) * seqlen
        return cls.from_cu_seqlens(cu, batch, seqlen)

    @classmethod
    def from_lengths(cls, lengths: list[int]) -> Segments:
        """One row holding consecutive segments of the given lengths (used by the vision tower)."""
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64)
        return cls.from_cu_seqlens(cu, 1, int(cu[-1]))

    def mask(self, causal: bool) -> torch.Tensor:
        """Boolean [B, 1, T, T] mask, True = may attend."""
        s = self.seg_ids
        m = s[:, :, None] == s[:, None, :]
        if causal:
            t = s.shape[1]
            m = m & torch.ones(t, t, dtype=torch.bool, device=s.device).tril()
        return m[:, None]


def uses_flash(q: torch.Tensor) -> bool:
    name = _BACKEND["name"]
    if name == "sdpa" or _flash_varlen is None:
        return False
    ok = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
    if name == "flash" and not ok:
        raise RuntimeError("flash backend needs CUDA fp16/bf16 tensors")
    return ok


def varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: Segments, causal: bool,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """q: [B, T, Hq, D], k/v: [B, T, Hkv, D] (Hq a multiple of Hkv) -> [B, T, Hq, D].

    `mask` may be passed in precomputed (segments.mask(causal)) so layers share one mask;
    without it, one-segment-per-row batches use SDPA's is_causal path and no mask at all.
    A FlexAttention BlockMask (`flex_attention.document_mask`) selects FlexAttention instead.
    """
    b, t, hq, d = q.shape
    if mask is not None and not isinstance(mask, torch.Tensor):  # a FlexAttention BlockMask
        from .flex_attention import attend

        out = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, kind="vision")
        return out.transpose(1, 2)
    if uses_flash(q):
        out = _flash_varlen(
            q.reshape(b * t, hq, d),
            k.reshape(b * t, k.shape[2], d),
            v.reshape(b * t, v.shape[2], d),
            segments.cu_seqlens, segments.cu_seqlens, segments.max_seqlen, segments.max_seqlen,
            causal=causal,
        )
        return out.view(b, t, hq, d)
    is_causal = False
    if mask is None:
        if segments.one_per_row:  # lets SDPA pick its fused causal kernel
            is_causal = causal
        else:
            mask = segments.mask(causal)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
        is_causal=is_causal, enable_gqa=k.shape[2] != hq,
    )
    return out.transpose(1, 2)


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Decoding with a KV cache. q: [B, Tq, Hq, D]; k/v: [B, Tk, Hkv, D]; mask [B, 1, Tq, Tk]."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
        enable_gqa=k.shape[2] != q.shape[2],
    )
    return out.transpose(1, 2)


def make_decode_mask(key_valid: torch.Tensor, q_len: int) -> torch.Tensor:
    """Causal mask for the last q_len queries over all keys, hiding padded keys.

    key_valid: [B, Tk] bool (False = left padding). Each query may always see its own key so a
    query at a pad position has a non-empty row; otherwise SDPA would produce NaN there, and the
    NaN would leak into real tokens through 0·NaN in the value product of later layers.
    """
    b, tk = key_valid.shape
    kpos = torch.arange(tk, device=key_valid.device)
    qpos = kpos[tk - q_len:]
    causal = kpos[None, :] <= qpos[:, None]  # [Tq, Tk]
    m = causal[None] & key_valid[:, None, :]
    m = m | (kpos[None, :] == qpos[:, None])[None]
    return m[:, None]
