"""Cross entropy fused with the (vocab-parallel) output layer, computed in token chunks.

The plain path materialises logits [S, B, V/tp] in the model dtype, a float32 copy, and the
float32 softmax that megatron's `vocab_parallel_cross_entropy` keeps for backward: for 8192
tokens × 151,936 vocab that is ~5 GB per fp32 tensor. Here only `chunk` tokens' logits exist at a
time. Forward keeps, per token, the log-sum-exp (one float); backward recomputes each chunk's
logits from the saved hidden states and weight (one extra output-layer matmul, ~1/3 more
output-layer FLOPs) and turns them into the gradients of the hidden states and the weight.

Under tensor parallelism each rank holds a V/tp slice of the vocabulary (megatron's
ColumnParallelLinear layout): the max, the target logit and the sum of exponentials are
all-reduced over the TP group exactly as in `vocab_parallel_cross_entropy`, and the hidden-state
gradient (a partial sum over this rank's vocabulary slice) is all-reduced by
`copy_to_tensor_model_parallel_region`, as ColumnParallelLinear's backward does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel


def _tp():
    world = ps.get_tensor_model_parallel_world_size()
    group = ps.get_tensor_model_parallel_group() if world > 1 else None
    return group, world, ps.get_tensor_model_parallel_rank() if world > 1 else 0


class _ChunkedVocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, target, chunk: int):
        group, _, rank = _tp()
        v_local = weight.shape[0]
        local = target - rank * v_local
        in_range = (local >= 0) & (local < v_local)
        local = torch.where(in_range, local, 0)
        n = hidden.shape[0]
        loss = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(loss)
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            logits = None  # free the previous chunk's block first
            logits = (hidden[s:e] @ weight.t()).float()
            m = logits.max(-1).values
            if group is not None:
                dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
            logits -= m[:, None]
            pred = logits.gather(1, local[s:e, None])[:, 0] * in_range[s:e]
            sumexp = logits.exp_().sum(-1)
            if group is not None:
                both = torch.stack([pred, sumexp])
                dist.all_reduce(both, group=group)
                pred, sumexp = both[0], both[1]
            log_sum = sumexp.log()
            loss[s:e] = log_sum - pred
            lse[s:e] = m + log_sum
        ctx.save_for_backward(hidden, weight, local, in_range, lse)
        ctx.chunk = chunk
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, local, in_range, lse = ctx.saved_tensors
        n = hidden.shape[0]
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        want_w = ctx.needs_input_grad[1]
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if want_w else None
        rows = torch.arange(n, device=hidden.device)
        for s in range(0, n, ctx.chunk):
            e = min(n, s + ctx.chunk)
            h = hidden[s:e]
            # softmax - onehot(target), scaled by the incoming per-token gradient; in place,
            # so one chunk's [chunk, V/tp] float32 block is the largest thing alive
            g = (h @ weight.t()).float()
            g -= lse[s:e, None]
            g.exp_()
            g[rows[: e - s], local[s:e]] -= in_range[s:e].float()
            g *= grad_loss[s:e, None]
            g = g.to(hidden.dtype)
            if grad_h is not None:
                grad_h[s:e] = g @ weight
            if want_w:
                grad_w += (g.t() @ h).float()
            del g  # before the next chunk's logits are allocated
        return grad_h, grad_w.to(weight.dtype) if want_w else None, None, None


def chunked_vocab_parallel_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor,
                                         target: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per-token CE of `hidden` [N, H] against `target` [N] (global vocabulary ids, all valid)
    for the output layer `weight` [V/tp, H] of this TP rank -> [N] float32."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    hidden = tensor_parallel.copy_to_tensor_model_parallel_region(hidden)
    return _ChunkedVocabParallelCE.apply(hidden, weight, target, chunk)
