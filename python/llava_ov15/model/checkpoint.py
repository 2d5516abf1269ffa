"""HF safetensors checkpoints: lazy load (single file or sharded) and save in the published layout.

Our module tree uses the published key names directly (`visual.*`, `model.*`, `lm_head.weight`),
so no renaming happens. Loading builds the model on the `meta` device and materialises one tensor
at a time from memory-mapped files (`safe_open`), so peak RAM is about one copy of the weights in
the target dtype, not two.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import LlavaOV15Config

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint does not fit the model; the message lists every offending key."""


def _shard_files(directory: Path) -> dict[str, Path]:
    """key -> file that holds it."""
    index = directory / INDEX_NAME
    if index.exists():
        wm = json.loads(index.read_text())["weight_map"]
        return {k: directory / f for k, f in wm.items()}
    single = directory / SINGLE_NAME
    files = [single] if single.exists() else sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors checkpoint in {directory}")
    out: dict[str, Path] = {}
    for f in files:
        with safe_open(f, framework="pt") as h:
            out.update(dict.fromkeys(h.keys(), f))
    return out


def iter_checkpoint(directory: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) one at a time, file by file (each file memory-mapped once)."""
    by_file: dict[Path, list[str]] = {}
    for k, f in _shard_files(Path(directory)).items():
        by_file.setdefault(f, []).append(k)
    for f, keys in sorted(by_file.items()):
        with safe_open(f, framework="pt") as h:
            for k in keys:
                yield k, h.get_tensor(k)


def checkpoint_shapes(directory: str | Path) -> dict[str, tuple[int, ...]]:
    out = {}
    files = _shard_files(Path(directory))
    for f in set(files.values()):
        with safe_open(f, framework="pt") as h:
            for k in h.keys():
                if k in files:
                    out[k] = tuple(h.get_slice(k).get_shape())
    return out


def validate_keys(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]],
                  where: str) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    bad_shape = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != found[k])
    if not (missing or unexpected or bad_shape):
        return
    lines = [f"checkpoint {where} does not match the model:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
    for k in bad_shape:
        lines.append(f"  shape mismatch {k}: checkpoint {found[k]} vs model {tuple(expected[k])}")
    raise CheckpointError("\n".join(lines))


def _param_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_state_dict_lazily(model: nn.Module, directory: str | Path, dtype: torch.dtype | None,
                           device: str | torch.device = "cpu") -> None:
    """Fill `model` (may live on meta) from the checkpoint, one tensor at a time."""
    validate_keys(_param_shapes(model), checkpoint_shapes(directory), str(directory))
    for key, t in iter_checkpoint(directory):
        mod_name, _, attr = key.rpartition(".")
        mod = model.get_submodule(mod_name)
        old = getattr(mod, attr)
        t = t.to(device=device, dtype=dtype or t.dtype)
        if isinstance(old, nn.Parameter):
            setattr(mod, attr, nn.Parameter(t, requires_grad=old.requires_grad))
        else:
            mod.register_buffer(attr, t)
        del t


def load_pretrained(path: str | Path, dtype: torch.dtype | None = None,
                    device: str | torch.device = "cpu"):
    """Load config.json + safetensors from a directory into our model.

    dtype None keeps the checkpoint dtype (bf16 for the published models).
    """
    from .llava import LlavaOV15ForConditionalGeneration

    directory = Path(path)
    cfg = LlavaOV15Config.from_pretrained(directory)
    with torch.device("meta"):
        model = LlavaOV15ForConditionalGeneration(cfg)
    tied = cfg.text.tie_word_embeddings
    if tied:  # the checkpoint holds the embedding once; re-tie after loading
        model.lm_head.register_parameter("weight", None)
    load_state_dict_lazily(model, directory, dtype, device)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def save_pretrained(model: nn.Module, path: str | Path, max_shard_bytes: int = 5 * 2**30,
                    dtype: torch.dtype | None = None) -> list[Path]:
    """Write config.json and safetensors (sharded with an index when over max_shard_bytes)."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save(directory)
    seen: set[int] = set()
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    total = 0
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen and v.numel():  # tied weights are stored once
            continue
        seen.add(v.data_ptr())
        t = v.detach().to("cpu", dtype or v.dtype).contiguous()
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += nbytes
        total += nbytes
    for stale in [*directory.glob("model*.safetensors"), directory / INDEX_NAME]:
        stale.unlink(missing_ok=True)
    meta = {"format": "pt"}
    if len(shards) == 1:
        out = [directory / SINGLE_NAME]
        save_file(shards[0], out[0], metadata=meta)
        return out
    n = len(shards)
    out, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file(shard, directory / name, metadata=meta)
        weight_map.update(dict.fromkeys(shard, name))
        out.append(directory / name)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return out
