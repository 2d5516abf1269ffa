"""RICE-ViT vision tower (the MLCD architecture at native resolution).

Input is the processor's flat patch list: pixel_values [Σ t·h·w, C·T·P·P] in 2×2 merge-window
order plus image_grid_thw [n_images, 3]. Every image becomes one sequence [CLS, patches...];
all images of a call run together as one packed row with block-diagonal attention, so batching
images never changes their results. The CLS token is dropped at the end and the patch merger maps
each 2×2 window to one LLM token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import Segments, uses_flash, varlen_attention
from .config import VisionConfig
from .merger import PatchMerger
from .qwen3 import rotate_half


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        if cfg.temporal_patch_size != 1:
            raise NotImplementedError("only temporal_patch_size=1 (images) is supported")
        p = cfg.patch_size
        # Kept as a Conv2d so the weight has the published shape [D, C, P, P].
        self.proj = nn.Conv2d(cfg.in_channels, cfg.hidden_size, kernel_size=p, stride=p, bias=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        # A stride-P conv over one P×P patch is a matmul with the flattened kernel.
        w = self.proj.weight
        return F.linear(patches.to(w.dtype), w.view(w.shape[0], -1))


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.h, self.d = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)  # rows [Q; K; V]
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.checkpoint_core = False  # selective recompute: keep only q/k/v for backward

    def forward(self, x, cos, sin, segments, mask):
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.h, self.d).unbind(1)
        # Rotary in fp32 (cos/sin are fp32), as the reference does, then back to the work dtype.
        c, s = cos[:, None], sin[:, None]
        q = (q.float() * c + rotate_half(q.float()) * s).to(v.dtype)
        k = (k.float() * c + rotate_half(k.float()) * s).to(v.dtype)
        if self.checkpoint_core and self.training and torch.is_grad_enabled():
            out = checkpoint(varlen_attention, q[None], k[None], v[None], segments, False, mask,
                             use_reentrant=False)
        else:
            out = varlen_attention(q[None], k[None], v[None], segments, causal=False, mask=mask)
        return self.proj(out.reshape(n, self.h * self.d))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = VisionAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = VisionMLP(cfg)

    def forward(self, x, cos, sin, segments, mask):
        x = x + self.attn(self.norm1(x), cos, sin, segments, mask)
        return x + self.mlp(self.norm2(x))


def patch_positions(grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """(row, col) of every patch, [Σ t·h·w, 2], in the processor's merge-window order."""
    out = []
    for t, h, w in grid_thw.tolist():
        rows = torch.arange(h).view(h // merge, merge, 1, 1).expand(-1, -1, w // merge, merge)
        cols = torch.arange(w).view(1, 1, w // merge, merge).expand(h // merge, merge, -1, -1)
        # (h/m, m, w/m, m) -> (h/m, w/m, m, m): window-major, then row-major inside the window
        rc = torch.stack([rows, cols], -1).permute(0, 2, 1, 3, 4).reshape(-1, 2)
        out.append(rc.repeat(t, 1))
    return torch.cat(out)


class VisionTower(nn.Module):
    """Checkpoint prefix `visual.`: RICE-ViT blocks plus the merger."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.patch_embed = PatchEmbed(cfg)
        self.class_embedding = nn.Parameter(torch.zeros(d))
        # Learned rotary angles of the CLS token (head_dim/2 values, duplicated like θ).
        self.class_pos_emb = nn.Parameter(torch.zeros(1, cfg.head_dim // 2))
        self.pre_layernorm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.num_layers))
        self.merger = PatchMerger(cfg)
        self.gradient_checkpointing = False  # full recompute: whole blocks
        self.attention = "sdpa"  # "sdpa" (SDPA / flash-attn varlen) | "flex" (FlexAttention)

    def set_recompute(self, mode: str) -> None:
        """"off" | "full" (every block recomputed in backward) | "selective" (attention core
        only: the softmax(QKᵀ)V part, whose activations grow with the image size)."""
        self.gradient_checkpointing = mode == "full"
        for blk in self.blocks:
            blk.attn.checkpoint_core = mode == "selective"

    def rope(self, grid_thw: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 cos/sin for the packed [CLS, patches] sequence of every image."""
        quarter = self.cfg.head_dim // 4  # frequencies per axis
        inv_freq = 1.0 / (self.cfg.rope_theta ** (
            torch.arange(0, 2 * quarter, 2, dtype=torch.float32, device=device) / (2 * quarter)))
        pos = patch_positions(grid_thw, self.cfg.spatial_merge_size).to(device)
        theta = (pos[..., None].float() * inv_freq).flatten(1)  # [N, 32]: rows then cols
        chunks, start = [], 0
        for t, h, w in grid_thw.tolist():
            chunks += [self.class_pos_emb.float(), theta[start:start + t * h * w]]
            start += t * h * w
        theta = torch.cat(chunks)
        emb = torch.cat([theta, theta], -1)
        return emb.cos(), emb.sin()

    def features(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Per-patch features before the merger, [Σ t·h·w, D], CLS tokens removed."""
        grid_thw = grid_thw.to("cpu", torch.long).view(-1, 3)
        n_img = grid_thw.prod(-1)
        if int(n_img.sum()) != pixel_values.shape[0]:
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} patches, grid_thw says "
                             f"{int(n_img.sum())}")
        x = self.patch_embed(pixel_values)
        cls = self.class_embedding.to(x.dtype)[None]
        parts = []
        for chunk in x.split(n_img.tolist()):
            parts += [cls, chunk]
        x = self.pre_layernorm(torch.cat(parts))
        lengths = (n_img + 1).tolist()
        segments = Segments.from_lengths(lengths)
        segments = Segments(segments.seg_ids.to(x.device), segments.cu_seqlens.to(x.device),
                            segments.max_seqlen)
        if self.attention == "flex":
            from .flex_attention import document_mask, padded_length

            mask = document_mask(segments.seg_ids, causal=False,
                                 length=padded_length(x.shape[0], x.is_cuda))
        elif uses_flash(x) or segments.one_per_row:
            mask = None
        else:
            mask = segments.mask(causal=False)
        cos, sin = self.rope(grid_thw, x.device)
        for blk in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(blk, x, cos, sin, segments, mask, use_reentrant=False)
            else:
                x = blk(x, cos, sin, segments, mask)
        keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        keep[segments.cu_seqlens[:-1].long()] = False  # the CLS token opens each image
        return x[keep]

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """-> merged image tokens [Σ t·h·w/4, out_hidden_size], in image order."""
        return self.merger(self.features(pixel_values, grid_thw))
