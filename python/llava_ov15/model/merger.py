"""Patch merger (vision→LLM adapter): LayerNorm, 2×2 window concat, 2-layer GELU MLP."""

from __future__ import annotations

import torch
from torch import nn

from .config import VisionConfig


class PatchMerger(nn.Module):
    """Checkpoint keys: `visual.merger.ln_q.*`, `visual.merger.mlp.{0,2}.*`.

    Input patches arrive in 2×2 merge-window order, so the 4 tokens of a window are adjacent and
    a plain view turns them into one (4·D)-vector: no gather needed.
    """

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.window = cfg.spatial_merge_size**2
        hidden = cfg.hidden_size * self.window
        self.ln_q = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, cfg.out_hidden_size)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, D] with N a multiple of 4 -> [N/4, out_hidden_size]."""
        return self.mlp(self.ln_q(x).view(-1, self.ln_q.normalized_shape[0] * self.window))
