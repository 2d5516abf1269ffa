"""Training checkpoints with megatron dist_checkpointing, SIGTERM handling, exact resume.

Layout of ``<checkpoint.dir>``::

    latest                      # text: name of the newest complete checkpoint
    iter_0000020/               # dist_checkpointing directory (any TP/PP/DP can load it)
        ...                     # model + optimizer (sharded), scheduler, step, config (common)
        extra/rank_00000.pt     # per rank: RNG states, data-loader state, parallel layout

Model and optimizer tensors are resharded on load (the distributed optimizer is saved
``fully_reshardable`` or ``dp_reshardable`` — the two that work on CPU). RNG states are restored
only when the layout is unchanged (they belong to ranks). The data state of data-parallel rank r
is restored on r; with a different DP size the synthetic source converts its global count, and a
real loader must accept rank 0's state or refuse.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, tensor_parallel
from megatron.core import parallel_state as ps

LATEST = "latest"


def _layout() -> dict[str, int]:
    return {"tp": ps.get_tensor_model_parallel_world_size(),
            "pp": ps.get_pipeline_model_parallel_world_size(),
            "dp": ps.get_data_parallel_world_size(), "world": dist.get_world_size()}


def _rng_state() -> dict[str, Any]:
    out = {"python": random.getstate(), "numpy": np.random.get_state(),
           "torch": torch.get_rng_state(),
           "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def _set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if torch.cuda.is_available() and "cuda" in s:
        torch.cuda.set_rng_state(s["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(s["tracker"])


def unwrap(m: torch.nn.Module) -> torch.nn.Module:
    """The bare `LlavaMegatron` under DDP / Float16Module (checkpoint keys are the same)."""
    while hasattr(m, "module") and not hasattr(m, "language"):
        m = m.module
    return m


def _sharded(model, optimizer, sharding_type: str, is_loading: bool) -> dict[str, Any]:
    model = [unwrap(m) for m in model]
    sd: dict[str, Any] = {}
    sd["model"] = model[0].sharded_state_dict() if len(model) == 1 else {
        f"model{i}": m.sharded_state_dict() for i, m in enumerate(model)}
    if optimizer is not None:
        model_sd = sd["model"] if len(model) == 1 else {
            k: v for d in sd["model"].values() for k, v in d.items()}
        sd["optimizer"] = optimizer.sharded_state_dict(
            model_sd, is_loading=is_loading,
            metadata={"distrib_optim_sharding_type": sharding_type})
    return sd


def init_optimizer_state(optimizer) -> None:
    """Give every parameter an (empty) Adam state so the optimizer's sharded_state_dict can be
    built for loading: megatron's torch-Adam path (no Apex/TE) expects a `step` per param."""
    for o in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(o, "optimizer", None)
        if inner is None:
            continue
        for group in inner.param_groups:
            for p in group["params"]:
                st = inner.state[p]
                if not st:
                    st["exp_avg"] = torch.zeros_like(p.data)
                    st["exp_avg_sq"] = torch.zeros_like(p.data)
                    st["step"] = torch.tensor(0.0)


@contextlib.contextmanager
def _step_tolerant_param_state_load():
    """megatron-core 0.16.1 + torch Adam (no Apex/TE): `load_state_dict` first puts `step` into
    every param's Adam state, then the fully_reshardable loader copies every key of that state
    from the checkpoint tensors, which have no `step` (KeyError). Supply the already-restored
    `step` for that copy (a no-op copy onto itself)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    orig = DistributedOptimizer._set_main_param_and_optimizer_states

    def patched(self, model_param, tensors):
        gi, go = self.model_param_group_index_map[model_param]
        state = self.optimizer.state.get(self.optimizer.param_groups[gi]["params"][go], {})
        if "step" in state and "step" not in tensors:
            tensors = {**tensors, "step": state["step"]}
        return orig(self, model_param, tensors)

    DistributedOptimizer._set_main_param_and_optimizer_states = patched
    try:
        yield
    finally:
        DistributedOptimizer._set_main_param_and_optimizer_states = orig


def _unshare_adam_steps(optimizer) -> None:
    """The same loader gives every parameter the *same* `step` tensor; torch Adam increments it
    in place once per parameter, which would corrupt bias correction after a resume."""
    for o in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(o, "optimizer", None)
        for st in (inner.state.values() if inner is not None else ()):
            if torch.is_tensor(st.get("step")):
                st["step"] = st["step"].detach().clone()


def latest_checkpoint(directory: str | Path) -> Path | None:
    d = Path(directory)
    f = d / LATEST
    if f.exists():
        p = d / f.read_text().strip()
        if p.exists():
            return p
    return None


CONFIG_NAME = "llava_config.json"  # the model's HF-layout config.json, for conversion back


def save(directory: str | Path, step: int, model, optimizer, scheduler, data, cfg_dict,
         sharding_type: str = "fully_reshardable", hf_config: dict | None = None) -> Path:
    d = Path(directory)
    path = d / f"iter_{step:07d}"
    if dist.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    sd = _sharded(model, optimizer, sharding_type, is_loading=False)
    sd["scheduler"] = scheduler.state_dict() if scheduler is not None else None
    sd["step"] = step
    sd["config"] = cfg_dict
    dist_checkpointing.save(sd, str(path))
    extra = path / "extra"
    extra.mkdir(exist_ok=True)
    torch.save({"layout": _layout(), "dp_rank": ps.get_data_parallel_rank(),
                "rng": _rng_state(), "data": data.state_dict() if data is not None else None},
               extra / f"rank_{dist.get_rank():05d}.pt")
    if dist.get_rank() == 0 and hf_config is not None:
        (path / CONFIG_NAME).write_text(json.dumps(hf_config, indent=2) + "\n")
    dist.barrier()
    if dist.get_rank() == 0:
        tmp = d / (LATEST + ".tmp")
        tmp.write_text(path.name + "\n")
        os.replace(tmp, d / LATEST)
    dist.barrier()
    return path


def load(path: str | Path, model, optimizer=None, scheduler=None, data=None,
         sharding_type: str = "fully_reshardable") -> int:
    """Restore everything saved by `save`; returns the step to continue from."""
    path = Path(path)
    if optimizer is not None:
        init_optimizer_state(optimizer)
    sd = _sharded(model, optimizer, sharding_type, is_loading=True)
    sd["scheduler"] = None
    sd["step"] = None
    loaded = dist_checkpointing.load(sd, str(path))
    _load_model(model, loaded["model"])
    if optimizer is not None:
        with _step_tolerant_param_state_load():
            optimizer.load_state_dict(loaded["optimizer"])
        _unshare_adam_steps(optimizer)
    if scheduler is not None and loaded.get("scheduler") is not None:
        scheduler.load_state_dict(loaded["scheduler"])
    mine = path / "extra" / f"rank_{dist.get_rank():05d}.pt"
    layout = _layout()
    extra = torch.load(mine, weights_only=False) if mine.exists() else None
    same = extra is not None and extra["layout"] == layout
    if same:
        _set_rng_state(extra["rng"])
    if data is not None:
        if not same:  # another layout: data-parallel rank r's state, or rank 0's
            cands = sorted((path / "extra").glob("rank_*.pt"))
            states = [torch.load(c, weights_only=False) for c in cands]
            # only the ranks that read data (TP rank 0, first stage) hold a data position
            by_dp = {s["dp_rank"]: s for s in states if s["data"] is not None}
            extra = by_dp.get(ps.get_data_parallel_rank(), by_dp.get(0))
        if extra is not None and extra["data"] is not None:
            data.load_state_dict(extra["data"])
    return int(loaded["step"])


def load_model_only(path: str | Path, model) -> None:
    """Weights from a checkpoint written by `save` or by `llava_ov15.convert` (any layout).

    `path` may also be a checkpoint directory holding `latest` (its newest checkpoint is used).
    """
    path = latest_checkpoint(path) or path
    sd = _sharded(model, None, "fully_reshardable", is_loading=True)
    # The contrastive temperature (train.contrastive_weight) is not in converted checkpoints or
    # in those of runs without it: it then keeps its initial value.
    stored = dist_checkpointing.load_tensors_metadata(str(path))
    fresh = [k for k in list(sd["model"]) if k.startswith("contrastive.") and k not in stored]
    for k in fresh:
        del sd["model"][k]
    loaded = dist_checkpointing.load(sd, str(path))
    _load_model(model, loaded["model"], allow_missing=fresh)


def _load_model(model, state, allow_missing=()) -> None:
    model = [unwrap(m) for m in model]
    if len(model) == 1:
        missing, unexpected = model[0].load_state_dict(state, strict=False)
        bad = sorted(set(missing) - set(allow_missing)) + sorted(unexpected)
        if bad:
            raise RuntimeError(f"checkpoint does not match the model: {bad[:5]}")
    else:
        for i, m in enumerate(model):
            m.load_state_dict(state[f"model{i}"])


def _has_checkpoints(d: Path) -> list[str]:
    return sorted(p.name for p in d.glob("iter_*") if p.is_dir()) if d.is_dir() else []


def _has_metrics(log_dir: str | None) -> bool:
    f = Path(log_dir) / "metrics.jsonl" if log_dir else None
    return f is not None and f.is_file() and f.stat().st_size > 0


def check_checkpoint_dir(cfg) -> None:
    """Refuse to start a fresh run over another run's checkpoints or metrics (it would overwrite
    `iter_*` and append a second history to metrics.jsonl) unless asked to continue or to start
    over. Pure file-system checks: every rank reaches the same verdict."""
    from .config import ConfigError

    c = cfg.checkpoint
    if c.resume and not c.dir:
        raise ConfigError("checkpoint.dir: --resume needs the directory to resume from")
    if c.resume or c.overwrite:
        return
    advice = "use --resume to continue it, --overwrite to start over, or another directory"
    if c.dir:
        found = _has_checkpoints(Path(c.dir))
        if found or (Path(c.dir) / LATEST).exists():
            raise ConfigError(f"checkpoint.dir {c.dir} already holds checkpoints "
                              f"({', '.join(found[-2:]) or LATEST}): {advice}")
    if _has_metrics(cfg.log.dir):
        raise ConfigError(f"log.dir {cfg.log.dir} already holds metrics.jsonl of another run: "
                          f"{advice}")


def clear_checkpoints(directory: str | None) -> None:
    """--overwrite: drop the previous run's checkpoints (rank 0, before the first save)."""
    import shutil

    if not directory:
        return
    d = Path(directory)
    (d / LATEST).unlink(missing_ok=True)
    for name in _has_checkpoints(d):
        shutil.rmtree(d / name)


# Files that describe a tokenizer next to its tokenizer.json (copied along when present).
TOKENIZER_COMPANIONS = ("tokenizer_config.json", "special_tokens_map.json",
                        "chat_template.jinja", "chat_template.json")


def save_tokenizer(directory: str | Path, spec: str, mc) -> Path:
    """Record the tokenizer this run trains with as `{checkpoint.dir}/tokenizer.json` (and its
    companions), so conversion to HF finds it next to the checkpoints."""
    import shutil

    from .data import load_tokenizer

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = d / "tokenizer.json"
    tmp = d / "tokenizer.json.tmp"
    if spec == "word":
        load_tokenizer("word", mc).save(str(tmp))
    else:
        from .resolve import tokenizer_file

        src = tokenizer_file(spec)
        shutil.copyfile(src, tmp)
        for name in TOKENIZER_COMPANIONS:
            if (src.parent / name).is_file():
                shutil.copyfile(src.parent / name, d / name)
    os.replace(tmp, out)
    return out


class StopFlag:
    """SIGTERM / Ctrl-C (SIGINT) -> finish the current step, checkpoint, exit cleanly.

    A second Ctrl-C aborts at once (KeyboardInterrupt where the main thread is)."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.requested = False
        self.signum: int | None = None
        self._old = {}
        for s in signals:
            self._old[s] = signal.signal(s, self._handler)

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        if signum == signal.SIGINT and dist.is_initialized() and dist.get_rank() == 0:
            os.write(2, b"\n[train] Ctrl-C: stopping after this step (again to abort now)\n")

    def synced(self) -> bool:
        """True on every rank if any rank got the signal (so all save together)."""
        from .cpu_compat import device

        t = torch.tensor([1.0 if self.requested else 0.0], device=device())
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
