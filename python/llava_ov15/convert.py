"""HF <-> megatron checkpoint conversion for the trainer.

    python -m llava_ov15.convert hf-to-mcore --hf HF_DIR --out MCORE_DIR
    python -m llava_ov15.convert mcore-to-hf --mcore MCORE_DIR --out HF_DIR [--dtype bf16]

`hf-to-mcore` writes a megatron dist_checkpointing directory holding the model only (TP=1 layout
on disk, loadable at any TP/PP with `checkpoint.load: MCORE_DIR` in a training config) plus
`llava_config.json`. `mcore-to-hf` accepts that or a training checkpoint (`.../iter_0000100`)
and writes config.json + safetensors with the published key names. The mapping only reorders
tensors (QKV interleaved per query group; SwiGLU [gate; up]), so HF -> mcore -> HF is bit-exact.
Runs as one process on the CPU (or a GPU when present).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "auto": None}


def _build(mc):
    from llava_ov15.train.megatron_model import build_model, transformer_config
    from llava_ov15.train.trainer import init_parallel

    init_parallel(1, 1)
    return build_model(mc, transformer_config(mc), te=False)


def hf_to_mcore(hf_dir: str | Path, out: str | Path) -> Path:
    from megatron.core import dist_checkpointing

    from llava_ov15.model.checkpoint import iter_checkpoint
    from llava_ov15.model.config import LlavaOV15Config
    from llava_ov15.train.checkpointing import CONFIG_NAME
    from llava_ov15.train.megatron_model import hf_to_megatron

    mc = LlavaOV15Config.from_pretrained(hf_dir)
    hf = dict(iter_checkpoint(hf_dir))
    dtype = next(iter(hf.values())).dtype
    model = _build(mc)
    full = hf_to_megatron(hf, mc)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in full and "_extra_state" not in k)
    if missing:
        raise ValueError(f"HF checkpoint lacks tensors for {missing}")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(full[name].to(p.dtype))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save({"model": model.sharded_state_dict()}, str(out))
    cfg = mc.to_hf_dict()
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def mcore_to_hf(mcore_dir: str | Path, out: str | Path, dtype: str = "auto") -> Path:
    from llava_ov15.model.checkpoint import save_pretrained
    from llava_ov15.model.config import LlavaOV15Config
    from llava_ov15.train.checkpointing import CONFIG_NAME, load_model_only
    from llava_ov15.train.megatron_model import megatron_to_hf

    src = Path(mcore_dir)
    cfg = json.loads((src / CONFIG_NAME).read_text())
    mc = LlavaOV15Config.from_hf_dict(cfg)
    model = _build(mc)
    load_model_only(src, [model])
    sd = megatron_to_hf({k: v for k, v in model.state_dict().items()
                         if "_extra_state" not in k}, mc)
    target = DTYPES[dtype]
    if target is None:
        name = cfg.get("torch_dtype", "float32")
        target = getattr(torch, name) if isinstance(name, str) else torch.float32

    class _Out:  # what save_pretrained needs: .config and .state_dict()
        config = mc

        @staticmethod
        def state_dict():
            return sd

    save_pretrained(_Out(), out, dtype=target)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llava_ov15.convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("hf-to-mcore", help="HF safetensors -> megatron dist checkpoint")
    a.add_argument("--hf", required=True)
    a.add_argument("--out", required=True)
    b = sub.add_parser("mcore-to-hf", help="megatron checkpoint -> HF safetensors")
    b.add_argument("--mcore", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--dtype", choices=sorted(DTYPES), default="auto")
    args = ap.parse_args(argv)
    if args.cmd == "hf-to-mcore":
        print(hf_to_mcore(args.hf, args.out))
    else:
        print(mcore_to_hf(args.mcore, args.out, args.dtype))
    return 0


if __name__ == "__main__":  # required: dist_checkpointing spawns worker processes
    sys.exit(main())
