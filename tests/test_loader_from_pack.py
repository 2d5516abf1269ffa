"""`SampleProcessor.from_pack`: the loader renders a pack's samples with the settings its
manifest records (tokenizer, pixel limits, caption format...); EXIF-rotated and transparent
images agree with the packer's token counts; the README's loader snippet runs as written."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava_ov15 import pack as packapi
from llava_ov15.data import SampleProcessor, ShardDataset
from llava_ov15.data.preprocess import smart_resize
from llava_ov15.data.tokenizer import qwen_tokenizer_json

ROOT = Path(__file__).resolve().parents[1]


def _image(i: int, orientation: int) -> bytes:
    """A 150×60 picture (upscaled by smart_resize) with EXIF orientation, or an RGBA PNG."""
    y, x = np.mgrid[0:60, 0:150]
    px = np.stack([x + i * 9, y * 4, (x * y) % 256], axis=2).astype(np.uint8)
    buf = io.BytesIO()
    if orientation == 0:
        alpha = ((x + y) % 256).astype(np.uint8)
        Image.fromarray(np.dstack([px, alpha]), "RGBA").save(buf, format="PNG")
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(px).save(buf, format="JPEG", quality=92, exif=exif.tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def packs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("from_pack")
    (root / "images").mkdir()
    lines = []
    for i in range(18):
        orientation = i % 9  # 0 = transparent PNG, 1..8 = EXIF-oriented JPEG
        rel = f"images/{i:03d}.{'png' if orientation == 0 else 'jpg'}"
        (root / rel).write_bytes(_image(i, orientation))
        if i % 2:
            rec = {"id": f"s{i}", "image": rel, "caption": f"A test picture number {i}."}
        else:
            rec = {"id": f"s{i}", "image": rel, "conversations": [
                {"from": "human", "value": "<image>\nWhat is shown?"},
                {"from": "gpt", "value": f"Stripes, number {i}."}]}
        lines.append(json.dumps(rec))
    (root / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    packapi.build(root / "corpus.jsonl", root / "shards", progress="quiet")
    tok = str(qwen_tokenizer_json())
    out = {}
    for fmt in ("pretrain", "chat"):
        out[fmt] = root / f"packed-{fmt}"
        packapi.pack(root / "shards", out[fmt], tok, max_len=2048, progress="quiet",
                     caption_format=fmt)
    out["shards"] = root / "shards"
    return out


@pytest.mark.parametrize("fmt", ["pretrain", "chat"])
def test_from_pack_renders_samples_as_the_pack_measured_them(packs, fmt):
    proc = SampleProcessor.from_pack(packs[fmt])
    ds, raw = ShardDataset(packs[fmt], transform=proc), ShardDataset(packs[fmt])
    n = 0
    for i in range(len(ds)):
        item = ds[i]  # the processor also checks decoded grids against the json's token counts
        recorded = [s["length"] for s in json.loads(bytes(raw[i]["json"]))["samples"]]
        assert item["seq_lens"] == recorded
        n += len(recorded)
    assert n == 18


def test_a_processor_with_other_settings_is_caught(packs):
    plain = SampleProcessor(qwen_tokenizer_json())  # pretraining captions: the chat pack differs
    ds = ShardDataset(packs["chat"], transform=plain)
    with pytest.raises(ValueError, match="recorded length"):
        for i in range(len(ds)):
            ds[i]


def test_exif_rotated_images_are_upright_and_agree_with_the_packer(packs):
    raw = ShardDataset(packs["pretrain"])
    proc = SampleProcessor.from_pack(packs["pretrain"])
    seen = set()
    for i in range(len(raw)):
        sample = raw[i]
        item = proc(sample)
        subs = json.loads(bytes(sample["json"]))["samples"]
        grids = item["image_grid_thw"].tolist()
        for sub, (_, gh, gw) in zip(subs, grids, strict=True):
            meta = sub["sample"]["images"][0]
            o = meta.get("orientation", 1)
            seen.add(o)
            h, w = smart_resize(*((150, 60) if o >= 5 else (60, 150)))
            assert (gh * 14, gw * 14) == (h, w), o
    assert seen == set(range(1, 9))


def test_from_pack_refuses_settings_that_contradict_the_manifest(packs, tmp_path):
    with pytest.raises(ValueError, match=r"min_pixels=784 .*min_pixels=3136"):
        SampleProcessor.from_pack(packs["pretrain"], min_pixels=784)
    with pytest.raises(ValueError, match="caption_format='chat'.*'pretrain'"):
        SampleProcessor.from_pack(packs["pretrain"], caption_format="chat")
    other = tmp_path / "tokenizer.json"
    other.write_text(qwen_tokenizer_json().read_text().replace('"<|im_end|>"', '"<|im_END|>"'))
    with pytest.raises(ValueError, match="not the one .* was packed with"):
        SampleProcessor.from_pack(packs["pretrain"], tokenizer=other)
    ok = SampleProcessor.from_pack(packs["pretrain"], alpha="drop",
                                   tokenizer=qwen_tokenizer_json(), min_pixels=3136)
    assert ok.alpha == "drop" and ok.kw["caption_format"] == "pretrain"


def test_from_pack_on_built_shards_says_to_pack_first(packs):
    with pytest.raises(ValueError, match="llava-pack pack"):
        SampleProcessor.from_pack(packs["shards"])


def test_readme_loader_snippet_runs_as_written(packs, tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    snippet = next(b for b in blocks if "SampleProcessor" in b)
    (tmp_path / "packed").symlink_to(packs["pretrain"])
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    loader = scope["loader"]
    assert len(loader) == len(ShardDataset(packs["pretrain"]))
    assert sum(len(b["seq_lens"]) for b in loader) == 18
