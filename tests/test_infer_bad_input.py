"""`python -m llava_ov15.infer` with a bad image or model directory: one line, exit 2."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava_ov15 import infer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from llava_ov15.model.testing import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("infer") / "model")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rgb = (np.random.default_rng(0).random((64, 80, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    (d / "good.jpg").write_bytes(buf.getvalue())
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "notes.jpg").write_text("not an image\n")
    (d / "empty.png").write_bytes(b"")
    return d


def error_line(capsys, argv) -> str:
    assert infer.main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("name,reason", [("missing.jpg", "no such file"),
                                         ("truncated.jpg", "truncated"),
                                         ("notes.jpg", "not an image"),
                                         ("empty.png", "not an image")])
def test_infer_bad_image_is_one_line_error(capsys, model_dir, images, name, reason):
    line = error_line(capsys, ["--model", str(model_dir), "--image", str(images / "good.jpg"),
                               "--image", str(images / name), "--prompt", "describe"])
    assert name in line and reason in line


def test_infer_missing_model_dir_is_one_line_error(capsys, tmp_path, images):
    line = error_line(capsys, ["--model", str(tmp_path / "nope"), "--prompt", "hi"])
    assert "no such directory" in line
    line = error_line(capsys, ["--model", str(tmp_path), "--prompt", "hi"])
    assert "no config.json" in line


def test_infer_model_dir_without_weights_is_one_line_error(capsys, tmp_path, model_dir):
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    line = error_line(capsys, ["--model", str(tmp_path), "--prompt", "hi", "--device", "cpu"])
    assert "safetensors" in line


def test_infer_cli_truncated_image_exits_2_without_traceback(model_dir, images):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    p = subprocess.run([sys.executable, "-m", "llava_ov15.infer", "--model", str(model_dir),
                        "--image", str(images / "truncated.jpg"), "--prompt", "describe"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()]
    assert "truncated.jpg" in p.stderr and p.stdout == ""


def test_infer_good_image_still_answers(capsys, model_dir, images):
    assert infer.main(["--model", str(model_dir), "--image", str(images / "good.jpg"),
                       "--prompt", "describe", "--max-new-tokens", "3", "--device", "cpu"]) == 0
    assert "finish:" in capsys.readouterr().err


def test_infer_opens_images_upright(tmp_path):
    """A phone photo stored sideways (EXIF orientation 6) is seen as the viewer sees it."""
    from llava_ov15.model.pipeline import load_image

    rgb = np.zeros((30, 50, 3), np.uint8)
    rgb[:, :10] = 255  # a white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(rgb).save(tmp_path / "side.jpg", exif=exif.tobytes(), quality=95)
    im = load_image(tmp_path / "side.jpg")
    assert im.size == (30, 50)  # (width, height) after rotation
    a = np.asarray(im.convert("L"))
    assert a[:8].mean() > 200 and a[-8:].mean() < 50  # the band is now at the top
