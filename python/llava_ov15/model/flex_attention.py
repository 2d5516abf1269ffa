"""Packed (document-masked) attention with PyTorch's FlexAttention: varlen without flash-attn/TE.

A pack is a [B, S] row of sub-samples described by per-token segment ids. Tokens attend only
inside their own segment (block-diagonal), causally for the LLM and fully for the vision tower.
`document_mask` turns the segment ids into a FlexAttention `BlockMask`: 128×128 tiles that lie
wholly outside every segment are skipped, so the cost is Σ len_i² (not S²) and no S×S mask is
kept in memory during the kernels.

Execution:
* CUDA: `torch.compile(flex_attention)` generates fused Triton forward and backward kernels
  (the eager function would materialise the full score matrix). One compiled callable per use
  ("llm": fixed pack length, compiled static; "vision": the patch count changes every batch, so
  its length is padded to a multiple of `VISION_PAD` and compiled with dynamic shapes, which
  keeps recompilations bounded).
* CPU: torch's public `flex_attention` refuses backward on CPU ("does not support backward on
  CPU"), and the compiled CPU kernel is slow to build. We call the higher-order op it dispatches
  to (`torch._higher_order_ops.flex_attention`), whose eager implementation is the dense math
  reference with a working autograd. That is what the CPU tests exercise: the same `BlockMask`
  and mask_mod as on GPU, checked against the explicit-mask path to float tolerance. It is not
  a fast path (the trainer's `auto` picks the mask path on CPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

VISION_PAD = 256  # vision sequence lengths are padded to a multiple of this on CUDA
_COMPILED: dict[str, object] = {}


def available() -> bool:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _api():
    try:
        from torch.nn.attention import flex_attention as fa
    except ImportError as e:  # pragma: no cover - torch < 2.5
        raise RuntimeError("attention 'flex' needs torch >= 2.5 "
                           "(torch.nn.attention.flex_attention)") from e
    return fa


def document_mask(seg: torch.Tensor, causal: bool, length: int | None = None):
    """BlockMask for segment ids `seg` [B, S]: same segment (and key <= query when causal).

    `length` > S pads the mask with a segment of its own (id -1) that only sees itself, so
    padded rows are never empty (no NaN) and never touch real tokens."""
    fa = _api()
    b, s = seg.shape
    if length is not None and length > s:
        seg = F.pad(seg, (0, length - s), value=-1)
    n = seg.shape[1]

    def same_doc(bi, h, q, kv):
        return seg[bi, q] == seg[bi, kv]

    def same_doc_causal(bi, h, q, kv):
        return (seg[bi, q] == seg[bi, kv]) & (q >= kv)

    mask_mod = same_doc_causal if causal else same_doc
    return fa.create_block_mask(mask_mod, b, None, n, n, device=seg.device)


def padded_length(n: int, on_cuda: bool) -> int:
    """Vision: the length a packed image sequence of `n` tokens is run at (see module doc)."""
    return -(-n // VISION_PAD) * VISION_PAD if on_cuda else n


def _compiled(kind: str):
    fn = _COMPILED.get(kind)
    if fn is None:
        fa = _api()
        # Static for the LLM (every pack has the configured length); dynamic for the vision
        # tower, whose padded length still varies from batch to batch.
        fn = torch.compile(fa.flex_attention, dynamic=kind == "vision")
        _COMPILED[kind] = fn
    return fn


def _eager(q, k, v, block_mask, scale: float) -> torch.Tensor:
    """CPU: flex's own eager (math) implementation, which has an autograd formula (GQA is
    handled by the op: key/value heads are shared by consecutive query heads)."""
    from torch._higher_order_ops.flex_attention import flex_attention as flex_hop

    fa = _api()
    options = {"PRESCALE_QK": False, "ROWS_GUARANTEED_SAFE": False,
               "BLOCKS_ARE_CONTIGUOUS": False, "WRITE_DQ": True, "OUTPUT_LOGSUMEXP": True,
               "OUTPUT_MAX": False}
    out = flex_hop(q, k, v, fa._identity, block_mask.as_tuple(), scale, options)
    return out[0]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask, *,
           scale: float | None = None, kind: str = "llm") -> torch.Tensor:
    """q [B, Hq, S, D], k/v [B, Hkv, S, D] (Hq a multiple of Hkv) -> [B, Hq, S, D].

    A `block_mask` built for a longer length (vision padding) pads q/k/v with zeros to it and
    crops the output."""
    s = q.shape[2]
    n = block_mask.shape[-1]
    if n > s:
        pad = (0, 0, 0, n - s)
        q, k, v = F.pad(q, pad), F.pad(k, pad), F.pad(v, pad)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    gqa = q.shape[1] != k.shape[1]
    if q.is_cuda:
        out = _compiled(kind)(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)
    else:
        out = _eager(q, k, v, block_mask, scale)
    return out[:, :, :s]
