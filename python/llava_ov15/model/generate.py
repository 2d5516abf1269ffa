"""Autoregressive generation: greedy/sampling, KV cache, stop conditions, streaming, batching.

Batches are left-padded: every row ends at the same column, so one new token per row is appended
each step. Pad keys are masked out and positions are counted over real tokens only
(cumsum of the mask), so a padded row computes exactly what it would compute alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .attention import make_decode_mask
from .qwen3 import KVCache


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    eos_token_ids: Sequence[int] | None = None  # default: <|im_end|>, <|endoftext|>
    stop_strings: Sequence[str] = ()
    use_cache: bool = True


@dataclass
class GenerationOutput:
    sequences: list[list[int]]  # new tokens per row (without eos)
    finish_reasons: list[str]  # "eos" | "stop" | "length" | a reason returned by `stream`
    texts: list[str] | None = None
    logits: list[torch.Tensor] = field(default_factory=list)  # per step [B, V] (keep_logits)


def sample_next(logits: torch.Tensor, cfg: GenerationConfig,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> next token ids [B]."""
    if not cfg.do_sample or cfg.temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = logits.topk(cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass *before* it already reaches top_p (keeps at least one)
        drop = probs.cumsum(-1) - probs >= cfg.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    valid = torch.zeros(len(prompts), width, dtype=torch.bool)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p):] = torch.as_tensor(list(p))
            valid[i, width - len(p):] = True
    return ids, valid


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    pixel_values: torch.Tensor | None = None,
    image_grid_thw: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
    stream: Callable[[int, int], str | None] | None = None,
    decode: Callable[[list[int]], str] | None = None,
    keep_logits: bool = False,
    sampler: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> GenerationOutput:
    """Generate for a batch of token-id prompts.

    Images of all rows are passed together in row order (as their placeholders appear).
    `stream(row, token_id)` is called for every accepted token as soon as it is chosen; when it
    returns a string, that row finishes here with the string as its finish reason (how a server
    applies per-request token limits, stop strings and cancellation within one batch).
    `decode` (ids -> text) enables stop strings and fills `texts`.
    `sampler(logits [B, V]) -> ids [B]` replaces `sample_next` (per-row sampling settings).
    """
    cfg = config or GenerationConfig()
    tok = model.config.tokens
    eos = set(cfg.eos_token_ids if cfg.eos_token_ids is not None else tok.eos)
    if cfg.stop_strings and decode is None:
        raise ValueError("stop_strings need a decode function")
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.view(-1, prompts.shape[-1]).tolist()
    ids, valid = left_pad(prompts, pad_id=tok.endoftext)
    dev = next(model.parameters()).device
    ids, valid = ids.to(dev), valid.to(dev)
    b, t0 = ids.shape
    gen = torch.Generator(device=dev).manual_seed(cfg.seed) if cfg.seed is not None else None
    tc = model.config.text
    dtype = model.lm_head.weight.dtype

    out: list[list[int]] = [[] for _ in range(b)]
    reasons = ["length"] * b
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    logits_log: list[torch.Tensor] = []
    cache = (KVCache(tc.num_layers, b, t0 + cfg.max_new_tokens, tc.num_kv_heads, tc.head_dim,
                     dtype, dev) if cfg.use_cache else None)
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    vision_pads = torch.tensor([tok.image, tok.video], device=dev)

    step_ids, step_pos = ids, positions
    for step in range(cfg.max_new_tokens):
        if cache is not None:
            res = model(step_ids, pixel_values if step == 0 else None,
                        image_grid_thw if step == 0 else None, position_ids=step_pos,
                        cache=cache, decode_mask=make_decode_mask(valid, step_ids.shape[1]),
                        logits_to_keep=1)
        else:  # recompute the whole (growing) sequence each step
            res = model(ids, pixel_values, image_grid_thw, position_ids=positions,
                        attention_mask=valid, logits_to_keep=1)
        logits = res.logits[:, -1].float()
        if keep_logits:
            logits_log.append(logits.cpu())
        # A generated <|image_pad|>/<|video_pad|> has no pixels behind it and cannot be fed back.
        logits = logits.index_fill(-1, vision_pads, float("-inf"))
        nxt = sampler(logits) if sampler is not None else sample_next(logits, cfg, gen)
        nxt = torch.where(done, torch.full_like(nxt, tok.endoftext), nxt)
        for i, token in enumerate(nxt.tolist()):
            if done[i]:
                continue
            if token in eos:
                done[i], reasons[i] = True, "eos"
                continue
            out[i].append(token)
            if stream is not None and (why := stream(i, token)) is not None:
                done[i], reasons[i] = True, why
                continue
            if cfg.stop_strings:
                text = decode(out[i])
                if any(s in text for s in cfg.stop_strings):
                    done[i], reasons[i] = True, "stop"
        if bool(done.all()):
            break
        # Finished rows keep stepping (cheap, masked from nothing) so shapes stay rectangular.
        new_pos = positions[:, -1:] + 1
        ids = torch.cat([ids, nxt[:, None]], 1)
        valid = torch.cat([valid, torch.ones(b, 1, dtype=torch.bool, device=dev)], 1)
        positions = torch.cat([positions, new_pos], 1)
        step_ids, step_pos = nxt[:, None], new_pos

    texts = None
    if decode is not None:
        texts = []
        for seq in out:
            text = decode(seq)
            cut = min((text.index(s) for s in cfg.stop_strings if s in text), default=len(text))
            texts.append(text[:cut])
    return GenerationOutput(out, reasons, texts, logits_log)
