"""Qwen3 decoder (the LLaVA-OV-1.5 language model).

Pre-norm RMSNorm blocks; attention with GQA, per-head RMSNorm on q and k (before RoPE), plain 1D
RoPE with theta from the config, no biases; SwiGLU MLP. Module names match the published
checkpoint (`model.layers.{i}.self_attn.q_proj`, ...). Tensors are kept as [B, T, heads, head_dim]
so packed rows and cached decoding share one code path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import Segments, masked_attention, uses_flash, varlen_attention
from .config import TextConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in fp32, then back to the input dtype *before* the weight multiply (as the
        # reference does), so bf16 results match it bit-for-bit.
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin [B, T, head_dim] for integer positions; angles computed in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32,
                                             device=position_ids.device) / head_dim))
    freqs = position_ids[..., None].float() * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [..., T, H, D]; cos/sin: [..., T, D] (broadcast over heads)."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return x * cos + rotate_half(x) * sin


class KVCache:
    """Preallocated per-layer key/value cache, [layers, B, max_len, Hkv, D]."""

    def __init__(self, num_layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu"):
        shape = (num_layers, batch, max_len, kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # tokens already committed

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        s, t = self.length, k.shape[1]
        if s + t > self.k.shape[2]:
            raise ValueError(f"KV cache full ({self.k.shape[2]} tokens)")
        self.k[layer, :, s:s + t] = k
        self.v[layer, :, s:s + t] = v
        return self.k[layer, :, :s + t], self.v[layer, :, :s + t]

    def advance(self, n: int) -> None:
        self.length += n


@dataclass
class AttnContext:
    """How a forward attends: packed segments (training/prefill) or a KV cache (decoding)."""

    segments: Segments | None = None
    mask: torch.Tensor | None = None  # SDPA boolean mask, shared by all layers
    cache: KVCache | None = None


class Qwen3Attention(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.h, self.hkv, self.d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.h * self.d, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.hkv * self.d, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.hkv * self.d, bias=False)
        self.o_proj = nn.Linear(self.h * self.d, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.d, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.d, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, ctx: AttnContext):
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, t, self.h, self.d))
        k = self.k_norm(self.k_proj(x).view(b, t, self.hkv, self.d))
        v = self.v_proj(x).view(b, t, self.hkv, self.d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer_idx, k, v)
        if ctx.segments is None:  # padded batch / cached decoding: explicit mask
            out = masked_attention(q, k, v, ctx.mask)
        else:
            out = varlen_attention(q, k, v, ctx.segments, causal=True, mask=ctx.mask)
        return self.o_proj(out.reshape(b, t, self.h * self.d))


class Qwen3MLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen3Layer(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Qwen3Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = Qwen3MLP(cfg)

    def forward(self, x, cos, sin, ctx: AttnContext):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, ctx)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3Model(nn.Module):
    """Embedding + decoder layers + final norm (checkpoint prefix `model.`)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Qwen3Layer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.gradient_checkpointing = False

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        segments: Segments | None = None,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """inputs_embeds [B, T, H]; position_ids [B, T].

        Packed mode (`mask` None): causal attention within `segments` (default: one per row).
        Masked mode: `mask` is a boolean [B, 1, T, cache_len + T] (see attention.decode_mask),
        used for left-padded batches, with or without a KV cache.
        """
        b, t, _ = inputs_embeds.shape
        if mask is None:
            if cache is not None:
                raise ValueError("cached decoding needs a decode mask")
            if segments is None:  # one causal sequence per row
                segments = Segments.per_row(b, t, inputs_embeds.device)
            if not uses_flash(inputs_embeds) and not segments.one_per_row:
                mask = segments.mask(causal=True)
        else:
            segments = None
        ctx = AttnContext(segments=segments, mask=mask, cache=cache)
        cos, sin = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta,
                                inputs_embeds.dtype)
        x = inputs_embeds
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, cos, sin, ctx, use_reentrant=False)
            else:
                x = layer(x, cos, sin, ctx)
        if cache is not None:
            cache.advance(t)
        return self.norm(x)


class Qwen3ForCausalLM(nn.Module):
    """Text-only Qwen3 with an untied head; same state-dict layout as transformers'."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Qwen3Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids, position_ids=None, segments=None):
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(
                input_ids)
        h = self.model(self.model.embed_tokens(input_ids), position_ids, segments=segments)
        return self.lm_head(h)
