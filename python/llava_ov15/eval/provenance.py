"""Model fingerprints and software versions recorded in results.json."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

_FULL_HASH_LIMIT = 64 << 20
_EDGE = 8 << 20


def file_digest(path: Path) -> str:
    """sha256 of the whole file up to 64 MiB; above that, of size + first and last 8 MiB."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= _FULL_HASH_LIMIT:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            h.update(f.read(_EDGE))
            f.seek(size - _EDGE)
            h.update(f.read(_EDGE))
    return h.hexdigest()


def model_fingerprint(spec: str) -> dict:
    """Fingerprint of a checkpoint directory (file names, sizes, content digests)."""
    p = Path(spec)
    if not p.is_dir():
        return {"spec": spec, "fingerprint": hashlib.sha256(spec.encode()).hexdigest()[:16],
                "method": "spec-string"}
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file())
    for f in files:
        rel = f.relative_to(p).as_posix()
        h.update(f"{rel}\0{f.stat().st_size}\0{file_digest(f)}\n".encode())
    out = {"spec": str(p.resolve()), "fingerprint": h.hexdigest()[:16], "files": len(files),
           "method": "sha256(name, size, sha256(content; >64MiB: size+first/last 8MiB))"}
    params = count_parameters(spec)
    if params is not None:
        out["parameters"] = params
    return out


def versions(with_java: bool = False) -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("llava-ov15", "numpy", "pyarrow", "Pillow", "matplotlib", "tqdm",
                "pycocoevalcap", "torch", "transformers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    if out["llava-ov15"] is None:
        from llava_ov15 import __version__

        out["llava-ov15"] = __version__
    if with_java:
        try:
            r = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
            out["java"] = (r.stderr or r.stdout).splitlines()[0] if (r.stderr or r.stdout) else None
        except (OSError, subprocess.TimeoutExpired):
            out["java"] = None
    return out


def count_parameters(spec: str) -> int | None:
    """Number of weights in a checkpoint directory's safetensors files, read from the file
    headers only (no torch, no tensor data); None when there are none or a header is bad."""
    p = Path(spec)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else []
    if not files:
        return None
    total = 0
    try:
        for f in files:
            with f.open("rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                if not 0 < n <= 100 << 20:
                    return None
                header = json.loads(fh.read(n))
            for name, t in header.items():
                if name == "__metadata__":
                    continue
                size = 1
                for d in t["shape"]:
                    size *= int(d)
                total += size
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return total


# Below this many weights a model is a toy (the demo's is ~10 M; the published one 8.5 B).
SMALL_MODEL_PARAMS = 100_000_000


def auto_notes(model: dict) -> list[str]:
    """Notes derived from the model's provenance, shown at the top of the report."""
    n = model.get("parameters")
    if n is None or n >= SMALL_MODEL_PARAMS:
        return []
    return [f"This model has only {n / 1e6:.1f} M parameters (LLaVA-OV-1.5-8B has 8.5 B): "
            "scores near zero are expected from a model this small or this briefly trained; "
            "they do not mean the evaluation is broken."]
