"""The release wheel installs into a clean virtualenv and `llava-pack` works from it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_wheel_installs_into_clean_venv_and_cli_runs(tmp_path, photo_jpeg):
    maturin = shutil.which("maturin", path=os.path.dirname(sys.executable)) or shutil.which(
        "maturin"
    )
    if maturin is None:
        pytest.fail("maturin is a test dependency (requirements/dev.txt) and must be installed")
    dist = tmp_path / "dist"
    subprocess.run(
        [maturin, "build", "--release", "--quiet", "--out", str(dist)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=1800,
    )
    [wheel] = dist.glob("llava_ov15-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    # numpy is the wheel's only dependency; reuse the wheels pip already has cached.
    subprocess.run([py, "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=600)
    cli = env_dir / "bin" / "llava-pack"
    help_text = subprocess.run([cli, "--help"], check=True, capture_output=True, text=True).stdout
    assert "build" in help_text
    (tmp_path / "a.jpg").write_bytes(photo_jpeg)
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "a", "image": "a.jpg", "caption": "x"}))
    subprocess.run(
        [
            cli,
            "build",
            "--input",
            str(tmp_path / "c.jsonl"),
            "--output",
            str(tmp_path / "out"),
            "--progress",
            "quiet",
        ],
        check=True,
        cwd=tmp_path,
    )
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["totals"]["samples"] == 1
    # The installed package is self-contained: it must not import from the source tree.
    where = subprocess.run(
        [py, "-c", "import llava_ov15; print(llava_ov15.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    assert str(env_dir) in where
    # Package data outside .py files ships too: the web demo of `llava_ov15.serve --ui`.
    static = subprocess.run(
        [py, "-c", "import importlib.resources as r; d = r.files('llava_ov15.serve') / 'static';"
         " print((d / 'index.html').is_file(), (d / 'app.js').is_file())"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    assert static.split() == ["True", "True"]
