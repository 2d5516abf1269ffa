"""LLaVA-OneVision-1.5 for conditional generation: vision tower + merger + Qwen3 + LM head.

Image tokens: the prompt holds one `<|image_pad|>` per merged image token; their embeddings are
replaced, in order, by the merger outputs of all images of the call (images listed in the order
their placeholders appear, row by row).

Packed training rows: pass `cu_seqlens` (over the flattened B·T tokens) or `position_ids` that
restart at 0 for each sub-sample; attention is then block-diagonal causal and positions restart,
so a packed row gives the same logits as its samples run alone. The loss never crosses a
sub-sample boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Segments, make_decode_mask
from .config import LlavaOV15Config
from .qwen3 import KVCache, Qwen3Model
from .vision import VisionTower

IGNORE_INDEX = -100


@dataclass
class ModelOutput:
    logits: torch.Tensor | None
    loss: torch.Tensor | None = None
    num_loss_tokens: int = 0


def positions_from_segments(segments: Segments) -> torch.Tensor:
    """0-based position of every token inside its segment, [B, T]."""
    flat = segments.seg_ids.flatten()
    idx = torch.arange(flat.numel(), device=flat.device)
    starts = segments.cu_seqlens.to(idx.device).long()[flat]
    return (idx - starts).view(segments.seg_ids.shape)


class LlavaOV15ForConditionalGeneration(nn.Module):
    def __init__(self, config: LlavaOV15Config):
        super().__init__()
        self.config = config
        self.visual = VisionTower(config.vision)
        self.model = Qwen3Model(config.text)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        if config.text.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    # ---- construction / checkpoints --------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None,
                        device: str | torch.device = "cpu") -> LlavaOV15ForConditionalGeneration:
        from .checkpoint import load_pretrained

        return load_pretrained(path, dtype=dtype, device=device)

    def save_pretrained(self, path: str | Path, **kw) -> None:
        from .checkpoint import save_pretrained

        save_pretrained(self, path, **kw)

    def init_weights(self, std: float = 0.02, seed: int | None = None) -> None:
        """Random init for tests/from-scratch runs (norms at 1, biases at 0)."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif p.ndim == 1 and ("norm" in name or "ln_q" in name):
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * std)

    def set_gradient_checkpointing(self, on: bool = True) -> None:
        self.visual.gradient_checkpointing = on
        self.model.gradient_checkpointing = on

    # ---- forward ---------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
              image_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.model.embed_tokens(input_ids)
        is_img = input_ids == self.config.tokens.image
        n_slots = int(is_img.sum())
        if pixel_values is None:
            if n_slots:
                raise ValueError(f"{n_slots} <|image_pad|> tokens but no pixel_values")
            return emb
        feats = self.visual(pixel_values, image_grid_thw)
        if feats.shape[0] != n_slots:
            raise ValueError(f"image features ({feats.shape[0]}) and <|image_pad|> tokens "
                             f"({n_slots}) do not match")
        return emb.masked_scatter(is_img[..., None], feats.to(emb.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        decode_mask: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        return_logits: bool = True,
    ) -> ModelOutput:
        """input_ids [B, T] (or [T]).

        * packed/plain: `cu_seqlens` and/or `position_ids` describe sub-samples;
        * left-padded batch: `attention_mask` [B, T] (1 = real token), positions derived;
        * cached decoding: `cache` + `decode_mask` (see generate.py) + explicit `position_ids`.
        `labels` are aligned with input_ids (shifted inside), IGNORE_INDEX = -100.
        `logits_to_keep=k` computes logits for the last k positions only (0 = all).
        """
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
            labels = labels[None] if labels is not None else None
            position_ids = position_ids[None] if position_ids is not None else None
        b, t = input_ids.shape
        x = self.embed(input_ids, pixel_values, image_grid_thw)
        segments = mask = None
        if attention_mask is not None and cache is None:
            valid = attention_mask.bool()
            if position_ids is None:
                position_ids = (valid.long().cumsum(-1) - 1).clamp(min=0)
            mask = make_decode_mask(valid, t)
        elif cache is not None:
            if decode_mask is None or position_ids is None:
                raise ValueError("cached forward needs decode_mask and position_ids")
            mask = decode_mask
        else:
            if cu_seqlens is not None:
                segments = Segments.from_cu_seqlens(cu_seqlens.to(input_ids.device), b, t)
            elif position_ids is not None:
                segments = Segments.from_position_ids(position_ids)
            else:
                segments = Segments.per_row(b, t, input_ids.device)
            if position_ids is None:
                position_ids = positions_from_segments(segments)
        h = self.model(x, position_ids, segments=segments, cache=cache, mask=mask)
        out = ModelOutput(logits=None)
        if labels is not None:
            out.loss, out.num_loss_tokens = self.loss(h, labels, segments)
        if return_logits:
            out.logits = self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)
        return out

    def loss(self, h: torch.Tensor, labels: torch.Tensor, segments: Segments | None):
        """Token-mean next-token cross entropy (fp32), never across sub-sample boundaries."""
        target = labels[:, 1:].clone()
        if segments is not None:
            same = segments.seg_ids[:, 1:] == segments.seg_ids[:, :-1]
            target[~same] = IGNORE_INDEX
        n = int((target != IGNORE_INDEX).sum())
        logits = self.lm_head(h[:, :-1]).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
        return loss / max(n, 1), n
