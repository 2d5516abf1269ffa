"""Stage 1's optional image-text contrastive term (`train.contrastive_weight`).

Per document (sub-sample) of a packed micro-batch: the mean of its merged vision tokens (the
merger's outputs, i.e. what replaces its <|image_pad|> embeddings) and the mean of the final
hidden states at its caption tokens (the positions whose token is trained, labels != -100).
Documents with both form the pairs of a symmetric InfoNCE (image->text and text->image) with a
learnable temperature (CLIP's log-scale parameter, clamped at 100). Negatives are the documents
of every data-parallel rank (all-gathered with gradient); the local sum is divided by the global
pair count and multiplied by the DP size, so DDP's gradient averaging yields exactly the mean
over all pairs of the global micro-batch, whatever the DP split.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

MAX_LOGIT_SCALE = math.log(100.0)


class ContrastiveHead(torch.nn.Module):
    """Holds the learnable temperature: logit_scale = log(1 / T), init log(1 / 0.07)."""

    def __init__(self, temperature: float = 0.07):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor([math.log(1.0 / temperature)]))

    def scale(self) -> torch.Tensor:
        return self.logit_scale.float().clamp(max=MAX_LOGIT_SCALE).exp()[0]


def pool_by_document(values: torch.Tensor, doc: torch.Tensor, n_docs: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """values [N, H], doc [N] (document index of each row) -> (means [D, H], counts [D])."""
    sums = values.new_zeros(n_docs, values.shape[-1]).index_add(0, doc, values)
    counts = torch.bincount(doc, minlength=n_docs)
    return sums / counts.clamp(min=1)[:, None].to(sums.dtype), counts


def document_pairs(vision: torch.Tensor, hidden: torch.Tensor, input_ids: torch.Tensor,
                   labels: torch.Tensor, seg: torch.Tensor, image_token: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(image features [d, H], caption features [d, H]) fp32 for the d documents that have both.

    vision [N_img, H] in row-major <|image_pad|> order; hidden [S, B, H]; seg [B, S] document
    index of each token (`megatron_model.segment_ids`)."""
    n_docs = int(seg.max()) + 1
    is_img = (input_ids == image_token).reshape(-1)
    flat_seg = seg.reshape(-1)
    img, n_img = pool_by_document(vision.float(), flat_seg[is_img], n_docs)
    cap = (labels != -100).reshape(-1)
    h = hidden.transpose(0, 1).reshape(-1, hidden.shape[-1])
    txt, n_txt = pool_by_document(h[cap].float(), flat_seg[cap], n_docs)
    keep = (n_img > 0) & (n_txt > 0)
    return img[keep], txt[keep]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient and keeps this rank's slice (works on
    gloo and NCCL alike: one all_reduce)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        ctx.rank, ctx.n = dist.get_rank(group), x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(out, x.contiguous(), group=group)
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n], None


def info_nce(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, group=None
             ) -> torch.Tensor:
    """Symmetric InfoNCE of this rank's pairs against the pairs of every rank in `group`.

    Every rank of `group` must call it (it all-gathers), even with no pairs of its own."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    n = img.shape[0]
    world = dist.get_world_size(group) if group is not None and dist.is_initialized() else 1
    if world > 1:
        counts = torch.zeros(world, dtype=torch.long, device=img.device)
        counts[dist.get_rank(group)] = n
        dist.all_reduce(counts, group=group)
        m = int(counts.max())
        if m == 0:
            return scale * 0.0 + img.sum() * 0.0
        pad = (0, 0, 0, m - n)
        all_img = _GatherWithGrad.apply(F.pad(img, pad), group)
        all_txt = _GatherWithGrad.apply(F.pad(txt, pad), group)
        rows = torch.arange(world * m, device=img.device)
        valid = (rows % m) < counts[rows // m]
        keys_img, keys_txt = all_img[valid], all_txt[valid]
        offset = int(counts[:dist.get_rank(group)].sum())
        total = int(counts.sum())
        # keep the gathers in the graph on a rank without pairs: their backward is collective
        anchor = (all_img.sum() + all_txt.sum()) * 0.0
    else:
        keys_img, keys_txt, offset, total, anchor = img, txt, 0, n, 0.0
    if n == 0:
        return scale * 0.0 + anchor
    target = torch.arange(offset, offset + n, device=img.device)
    i2t = F.cross_entropy(scale * img @ keys_txt.T, target, reduction="sum")
    t2i = F.cross_entropy(scale * txt @ keys_img.T, target, reduction="sum")
    return 0.5 * (i2t + t2i) * world / total + anchor
