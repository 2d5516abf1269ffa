"""megatron-core core attention on FlexAttention: packed rows without TransformerEngine.

`FlexCoreAttention` replaces the layer spec's `core_attention` submodule (megatron's
`DotProductAttention`, which needs an explicit [B, 1, S, S] mask and materialises the scores).
It receives this rank's heads (TP splits them: Hq/tp query heads, Hkv/tp key/value groups, the
same split as DotProductAttention) and, in place of a mask, the [B, S] segment ids of the pack
through the decoder's `attention_mask` argument. An integer tensor travels unchanged through
megatron's TransformerBlock, its full-recompute checkpoint and the selective
(`recompute_modules=["core_attn"]`) checkpoint, so all three work as they do for the mask path.

The segment ids become a document-causal `BlockMask` once per forward: every layer (and every
recomputation of a layer) sees the same tensor object or a detached alias of it (same storage),
and the mask is cached by that storage. The cache holds a reference to the segment tensor, so
its storage cannot be reused by another tensor while the entry lives, and is bounded (pipeline
schedules keep at most a few micro-batches in flight).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from megatron.core.transformer.module import MegatronModule
from megatron.core.utils import divide

from llava_ov15.model import flex_attention as flex

_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 16


def cached_document_mask(seg: torch.Tensor, causal: bool = True):
    key = (seg.untyped_storage().data_ptr(), seg.storage_offset(), tuple(seg.shape),
           tuple(seg.stride()), seg._version, causal)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit[1]
    mask = flex.document_mask(seg, causal)
    _CACHE[key] = (seg, mask)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return mask


class FlexCoreAttention(MegatronModule):
    """Drop-in `core_attention` for megatron's SelfAttention (same constructor arguments)."""

    def __init__(self, config, layer_number: int, attn_mask_type, attention_type: str,
                 attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection=None):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("flex attention does not implement context parallelism")
        drop = config.attention_dropout if attention_dropout is None else attention_dropout
        if drop:
            raise ValueError("flex attention does not implement attention dropout")
        if pg_collection is None:
            from megatron.core.process_groups_config import ProcessGroupCollection

            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        tp = pg_collection.tp.size()
        self.heads = divide(config.num_attention_heads, tp)
        self.groups = divide(config.num_query_groups, tp)
        self.head_dim = config.kv_channels
        self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(
            self.head_dim)
        if config.apply_query_key_layer_scaling:
            self.scale /= max(1, layer_number)  # as DotProductAttention (off by default)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        """query [S, B, Hq/tp, D], key/value [S, B, Hkv/tp, D], attention_mask = segment ids
        [B, S] (int) -> [S, B, Hq/tp·D]."""
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("flex attention takes segment ids, not packed_seq_params/bias")
        if attention_mask is None or attention_mask.dtype == torch.bool:
            raise ValueError("flex attention expects [B, S] segment ids as attention_mask")
        mask = cached_document_mask(attention_mask, causal=True)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [B, H, S, D]
        out = flex.attend(q, k, v, mask, scale=self.scale, kind="llm")
        s, b = query.shape[:2]
        return out.permute(2, 0, 1, 3).reshape(s, b, self.heads * self.head_dim)
