"""The training loop: `train(cfg)` plus the helpers it is made of.

One process per device (torchrun) or a single process; TP/PP/DP from `parallel_state`, megatron
DDP (+ distributed optimizer), the megatron pipeline schedules for gradient accumulation over
micro-batches, clipping, cosine LR with warmup, SIGTERM/Ctrl-C-safe checkpoints and exact resume.
Data is read on one rank per TP group and shared (`batching`); the recipe extras: the stage-1
contrastive term (`contrastive`), stage-2 hard-sample mining (`mining`), the per-micro-batch
image-token cap and the CUDA out-of-memory retry (`step_with_oom_retry`).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import cpu_compat
from .config import STAGE_TRAINABLE, TrainConfig, validate


@dataclass
class Runtime:
    device: torch.device
    rank: int
    world: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    dp: int
    first_stage: bool
    last_stage: bool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group() -> None:
    """gloo on CPU (with cpu_compat installed), nccl on GPU; works without torchrun too."""
    on_cpu = cpu_compat.install()
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:  # plain `python -m ...`: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    if not on_cpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("gloo" if on_cpu else "nccl")


def init_parallel(tp: int = 1, pp: int = 1, seed: int = 1234) -> None:
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    init_process_group()
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def init_runtime(cfg: TrainConfig) -> Runtime:
    """Process group, model-parallel groups, seeds; validates the layout against the world."""
    from megatron.core import parallel_state as ps

    init_process_group()
    validate(cfg, dist.get_world_size())
    init_parallel(cfg.parallel.tp, cfg.parallel.pp, cfg.train.seed)
    return Runtime(cpu_compat.device(), dist.get_rank(), dist.get_world_size(),
                   ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
                   ps.get_data_parallel_rank(), ps.get_data_parallel_world_size(),
                   ps.is_pipeline_first_stage(), ps.is_pipeline_last_stage())


# ---- model / optimizer ---------------------------------------------------------------------
def trainable_prefixes(cfg: TrainConfig) -> list[str] | None:
    out = cfg.train.trainable if cfg.train.trainable is not None else \
        STAGE_TRAINABLE[cfg.train.stage]
    if out is not None and cfg.train.contrastive_weight > 0:
        out = [*out, "contrastive."]  # the learnable temperature trains with the adapter
    return out


def _shard_for_rank(key: str, t: torch.Tensor, p: torch.nn.Parameter) -> torch.Tensor:
    """This TP rank's slice of a full (TP=1) tensor for parameter `p`."""
    from megatron.core import parallel_state as ps

    tp, r = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    if not getattr(p, "tensor_model_parallel", False) or tp == 1:
        return t
    dim = p.partition_dim
    if key.endswith("mlp.linear_fc1.weight"):  # [gate; up], each split over TP
        return torch.cat([c.chunk(tp, dim)[r] for c in t.chunk(2, 0)], 0)
    return t.chunk(tp, dim)[r]


def _full_shape(key: str, p: torch.nn.Parameter) -> list[int]:
    from megatron.core import parallel_state as ps

    shape = list(p.shape)
    if getattr(p, "tensor_model_parallel", False):
        shape[p.partition_dim] *= ps.get_tensor_model_parallel_world_size()
    return shape


def _global_names(model: torch.nn.Module, config):
    """(global TP=1/PP=1 key, parameter) for this rank's parameters."""
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    offset = get_transformer_layer_offset(config)
    marker = "language.decoder.layers."
    for name, p in model.named_parameters():
        if name.startswith(marker):
            i, rest = name[len(marker):].split(".", 1)
            name = f"{marker}{int(i) + offset}.{rest}"
        yield name, p


def load_full_state(model: torch.nn.Module, full: dict[str, torch.Tensor], config) -> None:
    """Copy TP=1/PP=1 (`hf_to_megatron`) tensors into this rank's shard of the model."""
    with torch.no_grad():
        for key, p in _global_names(model, config):
            p.copy_(_shard_for_rank(key, full[key], p).to(p.dtype))


def init_weights(model: torch.nn.Module, config, std: float, seed: int) -> None:
    """Layout-independent random init: every full tensor comes from a generator seeded by
    (seed, its global name), then is sliced for this rank, so TP/PP/DP runs start identical.
    Norm weights 1, biases 0, everything else N(0, std)."""
    import zlib

    with torch.no_grad():
        for key, p in _global_names(model, config):
            if key.endswith("bias"):
                p.zero_()
            elif p.ndim == 1 and ("norm" in key or "ln_q" in key):
                p.fill_(1.0)
            else:
                g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
                full = torch.randn(_full_shape(key, p), generator=g) * std
                p.copy_(_shard_for_rank(key, full, p).to(p.dtype))


def build_model(cfg: TrainConfig, rt: Runtime):
    """-> ([DDP-wrapped model chunk], raw module, model config, transformer config)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.transformer.module import Float16Module

    from . import megatron_model as mm

    mc = cfg.model_config()
    attn = mm.resolve_attention(cfg.parallel.attention)
    tcfg = mm.transformer_config(mc, tp=cfg.parallel.tp, pp=cfg.parallel.pp, bf16=cfg.train.bf16,
                                 recompute=cfg.train.recompute, init_std=cfg.model.init_std,
                                 token_mean_loss=cfg.train.loss == "token_mean")
    raw = mm.build_model(mc, tcfg, attn, loss_chunk_tokens=cfg.train.loss_chunk_tokens)
    init_weights(raw, tcfg, cfg.model.init_std, cfg.train.seed)
    if cfg.model.hf_checkpoint:
        from llava_ov15.model.checkpoint import iter_checkpoint

        load_full_state(raw, mm.hf_to_megatron(dict(iter_checkpoint(cfg.model.hf_checkpoint)),
                                               mc), tcfg)
    if cfg.train.contrastive_weight > 0:  # after init/loading: its own CLIP-style init
        from .contrastive import ContrastiveHead

        raw.contrastive = ContrastiveHead(cfg.train.contrastive_temperature).to(
            tcfg.params_dtype)
    n_train = mm.apply_freezing(raw, trainable_prefixes(cfg))
    if n_train == 0:
        raise RuntimeError(f"no trainable parameters on pipeline stage {rt.pp_rank} "
                           f"(train.trainable={trainable_prefixes(cfg)})")
    raw.to(rt.device)
    module = Float16Module(tcfg, raw) if cfg.train.bf16 else raw
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=cfg.parallel.overlap_grad_reduce,
        use_distributed_optimizer=cfg.parallel.distributed_optimizer)
    model = [DistributedDataParallel(tcfg, ddp_cfg, module)]
    return model, raw, mc, tcfg


def build_optimizer(cfg: TrainConfig, model, tcfg):
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    t = cfg.train
    ocfg = OptimizerConfig(
        optimizer="adam", lr=t.lr, min_lr=t.min_lr, weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1, adam_beta2=t.adam_beta2, adam_eps=t.adam_eps,
        clip_grad=t.clip_grad, bf16=t.bf16,
        params_dtype=torch.bfloat16 if t.bf16 else torch.float32,
        use_distributed_optimizer=cfg.parallel.distributed_optimizer)
    opt = get_megatron_optimizer(ocfg, model)
    warmup = t.warmup_steps if t.warmup_steps is not None else int(t.warmup_fraction * t.steps)
    sched = OptimizerParamScheduler(
        opt, init_lr=0.0, max_lr=t.lr, min_lr=t.min_lr, lr_warmup_steps=warmup,
        lr_decay_steps=t.steps, lr_decay_style=t.lr_decay_style, start_wd=t.weight_decay,
        end_wd=t.weight_decay, wd_incr_steps=t.steps, wd_incr_style="constant")
    tcfg.finalize_model_grads_func = finalize_model_grads
    tcfg.grad_scale_func = opt.scale_loss
    if cfg.parallel.overlap_grad_reduce:
        tcfg.no_sync_func = model[0].no_sync
        tcfg.grad_sync_func = model[0].start_grad_sync
    return opt, sched


# ---- one step ------------------------------------------------------------------------------
def _to(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}


def loss_func(valid: torch.Tensor, token_mean: bool, per_token: torch.Tensor,
              contrastive: torch.Tensor | None = None, weight: float = 0.0):
    """per_token [B, S] CE (0 where not trained) -> megatron loss tuple.

    pack_mean (reference): mean over rows of each row's token-mean CE; megatron averages it over
    micro-batches and DDP over data-parallel ranks -> mean over all packs of the global batch.
    token_mean: summed CE + token count; megatron divides by the global token count, so the
    global batch's loss is the same however it is split into micro-batches and DP ranks.
    `contrastive` (this micro-batch's InfoNCE) is added with `weight`: as is for pack_mean,
    times the micro-batch's token count for token_mean (a token-weighted mean after megatron's
    division). The reported dict also carries each row's token-mean CE (hard-sample mining).
    """
    per_token = per_token.float()
    count = valid.sum(1)
    per_row = per_token.sum(1) / count.clamp(min=1)
    rows = torch.where(count > 0, per_row, torch.full_like(per_row, float("nan"))).detach()
    extra = {"row_loss": rows}
    if contrastive is not None:
        extra["contrastive"] = torch.stack([contrastive.detach().float(),
                                            torch.ones((), device=per_row.device)])
    if token_mean:
        total = per_token.sum()
        n = count.sum().to(torch.int)
        loss = total if contrastive is None else total + weight * contrastive * n
        return loss, n, {"loss": torch.stack([total.detach(), n.float()]), **extra}
    loss = per_row.mean()
    if contrastive is not None:
        loss = loss + weight * contrastive
    return loss, {"loss": torch.stack([per_row.sum().detach(),
                                       torch.tensor(float(len(per_row)), device=loss.device)]),
                  **extra}


def forward_step(device, token_mean: bool, data_iterator, model, contrastive=None):
    """`contrastive`: (head, weight, image token id, DP group) when the term is on (pp=1)."""
    from .megatron_model import segment_ids, shifted_targets

    b = _to(next(data_iterator), device)
    # middle pipeline stages get only positions and boundaries (batching.StepBatches)
    ids = b["input_ids"] if "input_ids" in b else torch.zeros_like(b["position_ids"])
    pooled = {} if contrastive is not None else None
    out = model(ids, b["position_ids"], b["cu_seqlens"], b.get("labels"), b.get("pixel_values"),
                b.get("image_grid_thw"), **({"pooled": pooled} if pooled is not None else {}))
    if "labels" not in b:
        return out, None
    seg = segment_ids(b["cu_seqlens"], *ids.shape)
    valid = shifted_targets(b["labels"], seg) != -100
    c = None
    if contrastive is not None:
        from .contrastive import document_pairs, info_nce

        head, weight, image_token, group = contrastive
        vision = pooled.get("vision")
        if vision is None:  # no image in this micro-batch: no pairs (still join the gather)
            vision = torch.zeros(0, pooled["hidden"].shape[-1], device=ids.device)
        img, txt = document_pairs(vision, pooled["hidden"], ids, b["labels"], seg, image_token)
        c = info_nce(img, txt, head.scale(), group)
        return out, partial(loss_func, valid, token_mean, contrastive=c, weight=weight)
    return out, partial(loss_func, valid, token_mean)


def train_step(cfg: TrainConfig, rt: Runtime, model, opt, sched, batches: list[dict]) -> dict:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    for m in model:
        m.zero_grad_buffer()
    opt.zero_grad()
    s, mbs = cfg.data.seq_len, cfg.data.micro_batch_size
    te = getattr(model[0].module, "te", False) or getattr(
        getattr(model[0].module, "module", None), "te", False)
    contrastive = None
    if cfg.train.contrastive_weight > 0:
        from megatron.core import parallel_state as ps

        from .checkpointing import unwrap

        raw = unwrap(model[0])
        contrastive = (raw.contrastive, cfg.train.contrastive_weight, raw.mc.tokens.image,
                       ps.get_data_parallel_group())
    out = get_forward_backward_func()(
        forward_step_func=partial(forward_step, rt.device, cfg.train.loss == "token_mean",
                                  contrastive=contrastive),
        data_iterator=iter(batches), model=model, num_microbatches=len(batches),
        seq_length=s * mbs if te else s, micro_batch_size=1 if te else mbs, forward_only=False)
    ok, grad_norm, _ = opt.step()
    if ok:
        sched.step(increment=1)
    num = torch.zeros(4, dtype=torch.float64, device=rt.device)
    if rt.last_stage and rt.tp_rank == 0:
        for d in out:
            num[:2] += d["loss"].double()
            if "contrastive" in d:
                num[2:] += d["contrastive"].double()
    dist.all_reduce(num)
    res = {"loss": float(num[0] / num[1].clamp(min=1)), "grad_norm": float(grad_norm or 0.0),
           "skipped": not ok,
           "row_losses": [d["row_loss"].tolist() for d in out] if rt.last_stage else []}
    if contrastive is not None:
        res["contrastive_loss"] = float(num[2] / num[3].clamp(min=1))
        res["logit_scale"] = float(contrastive[0].logit_scale.detach().float()[0])
        res["temperature"] = float(1.0 / contrastive[0].scale().detach())
    return res


def peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


# ---- the loop -------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train per `cfg`; returns {"losses": [...], "step": last step, "stopped": bool}."""
    from . import checkpointing as ckpt
    from .metrics import FlopCounter, MetricsLogger, device_peak_tflops

    if cfg.data.kind is None or cfg.data.seq_len is None or cfg.data.tokenizer is None:
        from .resolve import resolve_inputs  # a config loaded with resolve=False

        resolve_inputs(cfg)
    ckpt.check_checkpoint_dir(cfg)
    rt = init_runtime(cfg)
    if cfg.checkpoint.overwrite and not cfg.checkpoint.resume and rt.rank == 0:
        ckpt.clear_checkpoints(cfg.checkpoint.dir)
    model, raw, mc, tcfg = build_model(cfg, rt)
    opt, sched = build_optimizer(cfg, model, tcfg)
    data = build_step_batches(cfg, rt, mc)
    step = resume_or_init(cfg, model, opt, sched, data)
    if cfg.checkpoint.dir and rt.rank == 0:
        ckpt.save_tokenizer(cfg.checkpoint.dir, cfg.data.tokenizer, mc)
    n_micro = cfg.train.global_batch_size // (cfg.data.micro_batch_size * rt.dp)
    names = [n for n, p in raw.named_parameters() if p.requires_grad]
    flops = FlopCounter(mc, any(n.startswith("vision.") and ".merger." not in n for n in names),
                        any(".merger." in n for n in names),
                        any(n.startswith("language.") for n in names), cfg.train.recompute,
                        labelled_head_only=cfg.train.loss_chunk_tokens > 0)
    peak = cfg.log.peak_tflops or device_peak_tflops()
    log = MetricsLogger(cfg.log.dir, cfg.log.progress, cfg.train.steps, step,
                        cfg.log.tensorboard, enabled=rt.rank == 0)
    stop, losses, oom_retries = ckpt.StopFlag(), [], 0
    if rt.rank == 0 and cfg.log.progress != "quiet":
        print("[train] Ctrl-C (or SIGTERM) stops after this step"
              + (" and saves a checkpoint" if cfg.checkpoint.dir and cfg.checkpoint.save_on_exit
                 else "") + "; a second Ctrl-C aborts at once", file=sys.stderr, flush=True)
    try:
        while step < cfg.train.steps:
            t0 = time.perf_counter()
            batches = data.next_step(n_micro)
            lr = opt.param_groups[0]["lr"]  # the LR this step uses
            res, batches = step_with_oom_retry(cfg, rt, model, opt, sched, data, batches,
                                               step + 1)
            oom_retries += res.get("oom_retry", 0)
            step += 1
            dt = time.perf_counter() - t0
            losses.append(res["loss"])
            if cfg.train.hard_mining is not None:
                data.record(step, [k for b in batches for k in b.get("keys", [])],
                            [v for r in res["row_losses"] for v in r])
            f = torch.tensor([sum(flops.batch_flops(b) for b in batches if "input_ids" in b),
                              data.last_hits], dtype=torch.float64, device=rt.device)
            if rt.dp > 1:
                from megatron.core import parallel_state as ps

                dist.all_reduce(f, group=ps.get_data_parallel_group())
            tokens = cfg.train.global_batch_size * cfg.data.seq_len
            rec = {"step": step, "loss": res["loss"], "lr": lr,
                   "grad_norm": res["grad_norm"], "tokens_per_s": tokens / dt,
                   "step_time_s": dt, "tflops_per_device": float(f[0]) / dt / rt.world / 1e12,
                   "mfu": float(f[0]) / dt / rt.world / (peak * 1e12) if peak else None,
                   "peak_mem_gb": peak_memory_gb(), "skipped": res["skipped"]}
            if "contrastive_loss" in res:
                rec.update(lm_loss=res["loss"], contrastive_loss=res["contrastive_loss"],
                           temperature=res["temperature"])
            if cfg.data.max_image_tokens_per_step is not None or oom_retries:
                # micro-batches (all DP ranks) shrunk to the cap in this step; OOM retries so far
                rec.update(image_cap_hits=int(f[1]), oom_retries=oom_retries)
            if cfg.train.hard_mining is not None:
                rec["hard_boosted_rows"] = getattr(data.source, "boosted", 0)
            if step % cfg.log.interval == 0 or step == cfg.train.steps:
                log.log(rec)
            if cfg.train.exit_after_steps == step:
                os.kill(os.getpid(), stop_signal())
            stopping = stop.synced()
            interval = cfg.checkpoint.save_interval
            due = (interval and step % interval == 0) or (step == cfg.train.steps) or (
                stopping and cfg.checkpoint.save_on_exit)
            if cfg.checkpoint.dir and due:
                ckpt.save(cfg.checkpoint.dir, step, model, opt, sched, data, cfg.to_dict(),
                          cfg.checkpoint.sharding_type, mc.to_hf_dict())
            if stopping:
                if rt.rank == 0:
                    print(f"[train] stopped by signal after step {step}"
                          + (f"; checkpoint in {cfg.checkpoint.dir}" if cfg.checkpoint.dir
                             else ""), file=sys.stderr, flush=True)
                break
    finally:
        log.close()
        stop.restore()
    return {"losses": losses, "step": step, "stopped": stop.requested}


def build_step_batches(cfg: TrainConfig, rt: Runtime, mc):
    """The run's `batching.StepBatches`: a data source (mining-wrapped in stage 2) only on the
    reader rank of each TP group / pipeline (`StepBatches.is_reader`)."""
    from .batching import StepBatches
    from .data import build_source

    source = None
    if StepBatches.is_reader(rt.tp_rank, rt.pp_rank):
        source = build_source(cfg, mc, rt.dp_rank, rt.dp)
        m = cfg.train.hard_mining
        if m is not None:
            from .mining import HardMiningSource

            source = HardMiningSource(source, m.fraction, m.boost, m.warmup_steps, m.ema,
                                      cfg.data.seed)
    return StepBatches(source, device=rt.device, image_token=mc.tokens.image,
                       pad_id=mc.tokens.endoftext, cap=cfg.data.max_image_tokens_per_step,
                       min_pixels=cfg.data.min_pixels)


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def step_with_oom_retry(cfg: TrainConfig, rt: Runtime, model, opt, sched, data, batches,
                        step: int) -> tuple[dict, list[dict]]:
    """`train_step`; on CUDA out-of-memory (on any rank that gets to report it) the step runs
    once more from the same rows with a lower image-token cap (`StepBatches.lower_cap`).

    Every rank must see the error for the retry to be collective: true when all ranks run out
    together (TP ranks share shapes), not when one DP rank fails inside a collective."""
    try:
        if cfg.train.inject_oom_at_step == step:  # test hook: as if the step ran out of memory
            raise torch.cuda.OutOfMemoryError("injected out-of-memory (train.inject_oom_at_step)")
        return train_step(cfg, rt, model, opt, sched, batches), batches
    except Exception as e:  # noqa: BLE001 - only OOM is handled, the rest re-raised
        if not (cfg.train.oom_retry and _is_oom(e)):
            raise
        err = e
    del batches
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    cap = data.lower_cap()
    if rt.rank == 0:
        print(f"[train] step {step}: out of memory ({str(err).splitlines()[0][:200]}); retrying "
              f"once with data.max_image_tokens_per_step={cap}", file=sys.stderr, flush=True)
    batches = data.redo(cap)
    res = train_step(cfg, rt, model, opt, sched, batches)
    res["oom_retry"] = 1
    return res, batches


def stop_signal() -> int:
    import signal

    return signal.SIGTERM


def resume_or_init(cfg: TrainConfig, model, opt, sched, data) -> int:
    from . import checkpointing as ckpt

    c = cfg.checkpoint
    if c.resume and c.dir:
        path = ckpt.latest_checkpoint(c.dir)
        if path is not None:
            step = ckpt.load(path, model, opt, sched, data, c.sharding_type)
            if dist.get_rank() == 0:
                print(f"[train] resumed from {path} at step {step}", file=sys.stderr, flush=True)
            return step
        if dist.get_rank() == 0:
            print(f"[train] --resume: no checkpoint in {c.dir} yet, starting fresh",
                  file=sys.stderr, flush=True)
    if c.load:
        ckpt.load_model_only(c.load, model)
        # the optimizer's fp32 master copies must follow the loaded weights
        opt.reload_model_params()
    return 0
