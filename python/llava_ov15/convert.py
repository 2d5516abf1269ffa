"""HF <-> megatron checkpoint conversion for the trainer.

    python -m llava_ov15.convert hf-to-mcore --hf HF_DIR --out MCORE_DIR
    python -m llava_ov15.convert mcore-to-hf --mcore CKPT --out HF_DIR [--tokenizer PATH]
                                             [--dtype bf16]

`hf-to-mcore` writes a megatron dist_checkpointing directory holding the model only (TP=1 layout
on disk, loadable at any TP/PP with `checkpoint.load: MCORE_DIR` in a training config) plus
`llava_config.json` and the HF directory's tokenizer files (so HF -> mcore -> HF keeps them).

`mcore-to-hf` accepts that, a training checkpoint (`.../iter_0000100`) or a training run's
checkpoint directory (the one holding `latest`: its newest checkpoint is converted), and writes a
complete HF directory: config.json + safetensors with the published key names, tokenizer.json,
tokenizer_config.json (Qwen2-VL chat template), generation_config.json and
preprocessor_config.json, ready for `python -m llava_ov15.infer`, `python -m llava_ov15.eval` and
transformers' AutoTokenizer. The tokenizer is `--tokenizer PATH` (a tokenizer.json or a directory
holding one), else the tokenizer.json in the checkpoint directory, else in the directory above
it (where training saves the tokenizer it used).

The mapping only reorders tensors (QKV interleaved per query group; SwiGLU [gate; up]), so
HF -> mcore -> HF is bit-exact, and config.json keys the model does not use are carried through.
Runs as one process on the CPU (or a GPU when present).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "auto": None}
CONFIG_NAME = "llava_config.json"  # = train.checkpointing.CONFIG_NAME (that module loads megatron)
LATEST = "latest"  # = train.checkpointing.LATEST


class ConvertError(Exception):
    """A user mistake (missing folder, not a checkpoint, no tokenizer): one line, no traceback."""


def _build(mc):
    from llava_ov15.train.megatron_model import build_model, transformer_config
    from llava_ov15.train.trainer import init_parallel

    init_parallel(1, 1)
    return build_model(mc, transformer_config(mc), te=False)


def _read_config(path: Path):
    from llava_ov15.model.config import LlavaOV15Config

    try:
        d = json.loads(path.read_text())
        return d, LlavaOV15Config.from_hf_dict(d)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConvertError(f"{path}: not a usable model config ({e})") from None


def _existing_dir(path: str | Path, flag: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise ConvertError(f"{flag} {p}: no such directory")
    if not p.is_dir():
        raise ConvertError(f"{flag} {p}: not a directory")
    return p


def resolve_mcore(path: str | Path) -> Path:
    """The checkpoint to convert: `path` itself, or the one its `latest` file names."""
    p = _existing_dir(path, "--mcore")
    latest = p / LATEST
    if latest.is_file():  # a training run's checkpoint.dir (train.checkpointing.latest_checkpoint)
        name = latest.read_text().strip()
        target = p / name
        if not name or not target.is_dir():
            raise ConvertError(f"--mcore {p}: {latest} names {name!r}, which is not a directory "
                               "here (pass an iter_* directory instead)")
        p = target
    if not (p / CONFIG_NAME).is_file():
        iters = sorted(x.name for x in p.glob("iter_*") if x.is_dir())
        hint = (f"; it holds {', '.join(iters[-3:])} but no `{LATEST}` file: pass one of them"
                if iters else "")
        raise ConvertError(f"--mcore {p}: not a checkpoint (no {CONFIG_NAME}){hint}")
    if not (p / "metadata.json").is_file():
        raise ConvertError(f"--mcore {p}: not a megatron checkpoint (no metadata.json; an "
                           "interrupted save?)")
    return p


def resolve_tokenizer(ckpt: Path, override: str | Path | None) -> Path:
    """--tokenizer, else tokenizer.json in the checkpoint, else in its parent (training root)."""
    from llava_ov15.model.hf_files import find_tokenizer

    if override is not None:
        found = find_tokenizer([Path(override)])
        if found is None:
            raise ConvertError(f"--tokenizer {override}: no such tokenizer.json (give the file "
                               "or a directory holding it)")
        return found
    # The parent counts only for a training checkpoint (iter_*): a converted directory keeps its
    # own tokenizer, and the folder above it may be anything.
    places = [ckpt, ckpt.parent] if ckpt.name.startswith("iter_") else [ckpt]
    found = find_tokenizer(places)
    if found is None:
        raise ConvertError(
            f"no tokenizer.json in {' or '.join(str(p) for p in places)}; the converted model "
            "would be unusable: pass --tokenizer PATH (the tokenizer.json used for training)")
    return found


def hf_to_mcore(hf_dir: str | Path, out: str | Path) -> Path:
    hf_dir = _existing_dir(hf_dir, "--hf")
    if not (hf_dir / "config.json").is_file():
        raise ConvertError(f"--hf {hf_dir}: not an HF model directory (no config.json)")
    raw, mc = _read_config(hf_dir / "config.json")

    import torch
    from megatron.core import dist_checkpointing

    from llava_ov15.model.checkpoint import iter_checkpoint
    from llava_ov15.model.hf_files import copy_companions
    from llava_ov15.train.megatron_model import hf_to_megatron

    try:
        hf = dict(iter_checkpoint(hf_dir))
    except FileNotFoundError as e:
        raise ConvertError(f"--hf {hf_dir}: {e}") from None
    dtype = next(iter(hf.values())).dtype
    model = _build(mc)
    full = hf_to_megatron(hf, mc)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in full and "_extra_state" not in k)
    if missing:
        raise ConvertError(f"--hf {hf_dir}: the checkpoint lacks tensors for {missing}")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(full[name].to(p.dtype))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save({"model": model.sharded_state_dict()}, str(out))
    cfg = mc.to_hf_dict()
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
    copy_companions(hf_dir, out)
    return out


def mcore_to_hf(mcore_dir: str | Path, out: str | Path, dtype: str = "auto",
                tokenizer: str | Path | None = None) -> Path:
    src = resolve_mcore(mcore_dir)
    cfg, mc = _read_config(src / CONFIG_NAME)
    tok_json = resolve_tokenizer(src, tokenizer)

    from llava_ov15.model.hf_files import TokenizerError, check_tokenizer, write_companions

    try:
        check_tokenizer(tok_json, mc)
    except TokenizerError as e:
        raise ConvertError(str(e)) from None

    import torch
    from megatron.core.dist_checkpointing.core import CheckpointingException

    from llava_ov15.model.checkpoint import save_pretrained
    from llava_ov15.train.checkpointing import load_model_only
    from llava_ov15.train.megatron_model import megatron_to_hf

    model = _build(mc)
    try:
        load_model_only(src, [model])
    except CheckpointingException as e:
        raise ConvertError(f"--mcore {src}: cannot load the model ({e})") from None
    sd = megatron_to_hf({k: v for k, v in model.state_dict().items()
                         if "_extra_state" not in k}, mc)
    name = DTYPES[dtype] or cfg.get("torch_dtype") or "float32"
    target = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(target, torch.dtype):
        target = torch.float32
    mc.extra["torch_dtype"] = str(target).removeprefix("torch.")

    class _Out:  # what save_pretrained needs: .config and .state_dict()
        config = mc

        @staticmethod
        def state_dict():
            return sd

    out = Path(out)
    save_pretrained(_Out(), out, dtype=target)
    write_companions(out, tok_json, mc)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llava_ov15.convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("hf-to-mcore", help="HF safetensors -> megatron dist checkpoint")
    a.add_argument("--hf", required=True)
    a.add_argument("--out", required=True)
    b = sub.add_parser("mcore-to-hf", help="megatron checkpoint -> complete HF directory")
    b.add_argument("--mcore", required=True,
                   help="checkpoint: iter_* dir, training checkpoint.dir (follows `latest`) or "
                        "hf-to-mcore output")
    b.add_argument("--out", required=True)
    b.add_argument("--tokenizer", default=None,
                   help="tokenizer.json (or its directory); default: found beside the checkpoint")
    b.add_argument("--dtype", choices=sorted(DTYPES), default="auto")
    args = ap.parse_args(argv)
    # megatron's notes about missing Apex/TransformerEngine on CPU installs and torch's
    # deprecations inside it are not the user's to act on, and would bury the output.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        if args.cmd == "hf-to-mcore":
            print(hf_to_mcore(args.hf, args.out))
        else:
            print(mcore_to_hf(args.mcore, args.out, args.dtype, args.tokenizer))
    except (ConvertError, OSError) as e:  # OSError: e.g. --out not writable, disk full
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # required: dist_checkpointing spawns worker processes
    sys.exit(main())
