"""docs/custom-data.md, run: a JSON array of {"image", "instruction", "response"} records →
`llava-pack build` → `llava-pack pack` → `convert hf-to-mcore` of a base model → stage-2
training from it → `convert mcore-to-hf` → `infer` → `eval`, each step as the user types it
(subprocesses), on a tiny model and a tiny generated file."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "custom-data.md"
pytest.importorskip("megatron.core")
pytest.importorskip("llava_ov15._native")


def run(cmd: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """One recipe command; `llava-pack` and `python` are the venv's (as after activating it)."""
    argv = shlex.split(cmd)
    if argv[0] == "llava-pack":
        argv = [sys.executable, "-m", "llava_ov15.cli.pack", *argv[1:]]
    elif argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python"), "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)
    assert p.returncode == 0, f"{cmd}\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p


def doc_commands() -> list[str]:
    """The commands of the recipe's ```bash blocks, continuation lines joined."""
    text = DOC.read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.split("  #")[0].strip()
            if cmd and not cmd.startswith("#"):
                out.append(re.sub(r"\s+", " ", cmd))
    return out


def step(commands: list[str], prefix: str) -> str:
    """The documented command starting with `prefix` (exactly one)."""
    found = [c for c in commands if c.startswith(prefix)]
    assert len(found) == 1, (prefix, found)
    return found[0]


def write_user_data(d: Path, photo_jpeg: bytes) -> None:
    """my_data.json as a user writes it: a pretty-printed array, images next to it."""
    (d / "images").mkdir()
    records = []
    for i in range(12):
        name = f"images/{i:04d}.jpg"
        (d / name).write_bytes(photo_jpeg[:-2] + bytes([i]) + photo_jpeg[-2:])
        records.append({"image": name, "instruction": f"What is shown in picture {i}?",
                        "response": f"A photo, number {i}."})
    records[3]["system"] = "Answer in one sentence."
    records.append({"images": ["images/0000.jpg", "images/0001.jpg"],
                    "instruction": "Compare <image> with <image>.", "response": "Alike."})
    records.append({"image": "images/0002.jpg", "instruction": "No answer here."})  # a reject
    (d / "my_data.json").write_text(json.dumps(records, indent=2))


def test_the_custom_data_recipe_runs_end_to_end(tmp_path, photo_jpeg):
    from llava_ov15.eval.testing import write_synthetic_benchmarks
    from llava_ov15.model.testing import save_tiny_checkpoint

    cmds = doc_commands()
    # The base model the recipe fine-tunes: a tiny random one in the published HF layout,
    # standing in for the downloaded LLaVA-OneVision-1.5 checkpoint.
    save_tiny_checkpoint(tmp_path / "base-hf", words=["What", "is", "shown", "A", "photo"])
    write_user_data(tmp_path, photo_jpeg)
    write_synthetic_benchmarks(tmp_path / "eval-data", n=2)
    # Small sizes for a CPU test; everything else as documented.
    shrink = {"--packs-per-shard 1000": "--packs-per-shard 2", "--max-len 8192": "--max-len 1024"}

    def doc(prefix: str, extra: str = "") -> str:
        cmd = step(cmds, prefix)
        for a, b in shrink.items():
            cmd = cmd.replace(a, b)
        # Run from the data folder: the config is the clone's.
        cmd = cmd.replace(" configs/", f" {ROOT}/configs/")
        return f"{cmd} {extra}".strip()

    run(doc("llava-pack build", "--progress quiet"), tmp_path)
    stats = json.loads((tmp_path / "shards" / "stats.json").read_text())
    assert (stats["records"], stats["samples"], stats["rejects"]) == (14, 13, 1)
    assert stats["kinds"] == {"instruction": 13}
    [rej] = [json.loads(x) for x in (tmp_path / "shards" / "rejects.jsonl").open()]
    assert rej["element"] == 13 and "response" in rej["reason"]

    run(doc("llava-pack pack", "--progress quiet"), tmp_path)
    packed = json.loads((tmp_path / "packed" / "manifest.json").read_text())
    assert packed["kind"] == "packed" and packed["options"]["max_len"] == 1024
    assert all(s["samples"] <= 2 for s in packed["shards"])  # --packs-per-shard 2

    run(doc("python -m llava_ov15.convert hf-to-mcore"), tmp_path)
    train = doc("python -m llava_ov15.train",
                "--set train.steps=2 --set log.progress=log --set log.tensorboard=false")
    assert "--set checkpoint.load=base-mcore/" in train and "--set data.path=packed/" in train
    p = run(train, tmp_path, timeout=600)
    assert "[train] step 2 " in p.stderr
    run(doc("python -m llava_ov15.convert mcore-to-hf"), tmp_path)
    assert (tmp_path / "finetuned-hf" / "config.json").is_file()
    assert (tmp_path / "finetuned-hf" / "tokenizer.json").read_bytes() == \
        (tmp_path / "base-hf" / "tokenizer.json").read_bytes()

    p = run(doc("python -m llava_ov15.infer", "--max-new-tokens 4"), tmp_path)
    assert "prompt" in p.stderr
    run(doc("python -m llava_ov15.eval", "--limit 2 --no-progress"), tmp_path)
    res = json.loads((tmp_path / "results" / "results.json").read_text())
    assert res["benchmarks"]["mme"]["n_samples"] == 2
