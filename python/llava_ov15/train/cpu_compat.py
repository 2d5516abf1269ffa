"""Run megatron-core on a CPU-only torch (gloo): the one place that adapts it.

megatron-core is written for CUDA: it allocates many tensors with ``device='cuda'`` or
``device=torch.cuda.current_device()``, calls ``.cuda()``, checks ``t.type() ==
'torch.cuda.FloatTensor'`` in the optimizer/clip-grad code, keeps its model-parallel RNG streams in
the CUDA generator and calls ``torch.cuda.synchronize`` in dist_checkpointing. Instead of patching
each of those ~170 sites we install, once per process:

* a ``TorchFunctionMode`` that rewrites CUDA devices to CPU in every torch call (factory
  functions' ``device=`` argument, ``Tensor.cuda()``, ``Tensor.to('cuda')``) and answers
  ``Tensor.type()`` with the ``torch.cuda.*`` name the optimizer asserts on;
* ``torch.cuda.current_device`` -> 0 (then mapped to CPU by the mode), ``synchronize`` no-op;
* the CUDA RNG hooks of ``megatron.core.tensor_parallel.random`` (and ``torch.cuda`` seeding used
  by its tracker) redirected to the CPU generator, so the model-parallel RNG tracker, dropout
  ``fork()`` and activation recompute work and are checkpointable.

``install()`` is a no-op when CUDA is available: on GPUs nothing here runs. Flags that must stay off
on CPU (checked by ``llava_ov15.train.config``): apply_rope_fusion, gradient_accumulation_fusion,
sequence_parallel, TransformerEngine attention / PackedSeqParams (we use a block-diagonal causal
mask + per-document positions instead).

Written for and tested with megatron-core ``MEGATRON_CORE_VERSION``; other versions warn.
"""

from __future__ import annotations

import warnings

import torch
from torch.overrides import TorchFunctionMode

MEGATRON_CORE_VERSION = "0.16.1"

_STATE: dict[str, object] = {"installed": False, "mode": None}


def _is_cuda_device(dev) -> bool:
    if dev is None:
        return False
    if isinstance(dev, int) and not isinstance(dev, bool):
        return True  # a bare ordinal means a CUDA device
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    return False


class _CudaToCpu(TorchFunctionMode):
    """Rewrite CUDA device requests to CPU in every torch call."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        elif func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if "cuda" not in name else name
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        return func(*args, **kwargs)


def _check_version() -> None:
    try:
        from megatron.core import __version__ as v
    except Exception:  # pragma: no cover
        return
    if v != MEGATRON_CORE_VERSION:
        warnings.warn(f"llava_ov15.train.cpu_compat was written for megatron-core "
                      f"{MEGATRON_CORE_VERSION}, found {v}; CPU runs may break", stacklevel=3)


def needed() -> bool:
    return not torch.cuda.is_available()


def install() -> bool:
    """Adapt megatron-core to the CPU; returns True if the adaptation is active (no-op on GPU)."""
    if not needed():
        return False
    if _STATE["installed"]:
        return True
    _check_version()
    import megatron.core.tensor_parallel.random as mrandom

    def get_state(device="cuda", clone=False, graph_safe=False):
        return torch.get_rng_state()

    def set_state(new_state, device=-1, graph_safe=False):
        torch.set_rng_state(new_state)

    mrandom._get_cuda_rng_state = get_state
    mrandom._set_cuda_rng_state = set_state
    torch.cuda.current_device = lambda: 0
    torch.cuda.synchronize = lambda device=None: None
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    torch.cuda.set_rng_state = lambda state, device="cuda": torch.set_rng_state(state)
    # The tracker seeds "the CUDA generator" between saving and restoring its state: use CPU.
    torch.cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    mode = _CudaToCpu()
    mode.__enter__()  # stays on for the life of the process (this thread)
    _STATE.update(installed=True, mode=mode)
    return True


def device() -> torch.device:
    """Where training tensors live: the local CUDA device, or the CPU under this adaptation."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
