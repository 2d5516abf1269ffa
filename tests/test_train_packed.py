"""The trainer on real `llava-pack pack` output: settings from the pack's manifest, contradicting
config values, one sample per row (`data.packed: false`), a tiny recipe with `data.path` alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llava_ov15.train.config import ConfigError, load_config
from llava_ov15.train.data import IGNORE_INDEX, split_pack

ROOT = Path(__file__).resolve().parents[1]
STAGE2 = ROOT / "configs/tiny/stage2_instruct.yaml"


def test_split_pack_gives_each_sub_sample_its_own_images():
    img = 9  # image-pad id; image 0 (grid 1x4x4 = 4 tokens) and image 1 (1x2x4 = 2 tokens)
    ids = torch.tensor([1, img, img, img, img, 2, 3, img, img, 4, 5, 6])
    labels = torch.where(ids == img, IGNORE_INDEX, ids)
    grid = torch.tensor([[1, 4, 4], [1, 2, 4]])
    pv = torch.arange(24 * 2, dtype=torch.float32).reshape(24, 2)
    item = {"input_ids": ids, "labels": labels, "seq_lens": [6, 4, 2],
            "pixel_values": pv, "image_grid_thw": grid}
    a, b, c = split_pack(item, img)
    assert a["input_ids"].tolist() == [1, img, img, img, img, 2] and a["seq_lens"] == [6]
    assert a["image_grid_thw"].tolist() == [[1, 4, 4]] and torch.equal(a["pixel_values"], pv[:16])
    assert b["input_ids"].tolist() == [3, img, img, 4] and b["labels"].tolist() == [3, -100, -100,
                                                                                     4]
    assert b["image_grid_thw"].tolist() == [[1, 2, 4]] and torch.equal(b["pixel_values"], pv[16:])
    assert c["input_ids"].tolist() == [5, 6] and len(c["image_grid_thw"]) == 0
    assert c["pixel_values"].shape == (0, 2)
    with pytest.raises(ValueError, match="image tokens"):
        split_pack({**item, "image_grid_thw": grid[:1], "pixel_values": pv[:16]}, img)


# ---- on a real pack ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pack_dir(tmp_path_factory) -> Path:
    """A small real pack: 16 photo samples (captions and conversations), --max-len 512."""
    pytest.importorskip("llava_ov15._native")
    from llava_ov15.data.tokenizer import qwen_tokenizer_json
    from llava_ov15.demo.corpus import CorpusSpec, write_corpus
    from llava_ov15.pack import build, pack

    root = tmp_path_factory.mktemp("own")
    corpus = write_corpus(root, CorpusSpec(n=16, seed=3, min_side=40, max_side=160,
                                           near_dup_fraction=0.0,
                                           shapes=("caption", "conversations")))
    build(corpus, root / "shards", phash="off", progress="quiet")
    pack(root / "shards", root / "packed", qwen_tokenizer_json(), max_len=512, progress="quiet")
    return root / "packed"


def test_packed_settings_come_from_the_manifest(pack_dir):
    from llava_ov15.data.pack_manifest import PackInfo

    info = PackInfo.load(pack_dir)
    cfg = load_config(STAGE2, [f"data.path={pack_dir}"])
    d = cfg.data
    assert d.kind == "packed" and d.seq_len == 512 == info.max_len
    assert Path(d.tokenizer) == info.tokenizer_file
    assert (d.min_pixels, d.max_pixels, d.caption_format) == (
        info.min_pixels, info.max_pixels, info.caption_format)
    mc = cfg.model_config()  # tiny model, vocabulary and ids fitted to the pack's tokenizer
    assert mc.text.hidden_size == 64 and mc.text.vocab_size >= 151_665
    assert mc.tokens.image == 151655


@pytest.mark.parametrize("override, message", [
    ("data.seq_len=128", "data.seq_len=128 but the pack was built with --max-len 512"),
    ("data.min_pixels=784", "data.min_pixels=784 but the pack was built with --min-pixels 3136"),
    ("data.caption_format=chat",
     "data.caption_format=chat but the pack was built with --caption-format pretrain"),
    ("data.max_image_tokens=64",
     "data.max_image_tokens=64 but the pack was built with no --max-image-tokens"),
    ("data.tokenizer=word", "data.tokenizer=word is the synthetic test tokenizer"),
    ("model.fit_tokenizer=false", "model.text.vocab_size=320 is too small for the tokenizer"),
])
def test_config_contradicting_the_pack_names_both_values(pack_dir, override, message):
    with pytest.raises(ConfigError) as e:
        load_config(STAGE2, [f"data.path={pack_dir}", override])
    assert message in str(e.value)


def test_not_packed_rows_hold_one_sample_each_and_resume_mid_pack(pack_dir):
    from llava_ov15.data.pack_manifest import PackInfo
    from llava_ov15.train.data import build_source

    info = PackInfo.load(pack_dir)
    cfg = load_config(STAGE2, [f"data.path={pack_dir}"])
    mc = cfg.model_config()
    src = build_source(cfg, mc, 0, 1)
    assert not src.packed
    rows, state_at = [], None
    for i in range(info.samples):
        if i == 1:
            state_at = src.state_dict()  # inside the first pack (several samples per pack)
        b = next(src)
        lens = (b["cu_seqlens"][1:] - b["cu_seqlens"][:-1]).tolist()
        real = lens[:-1] if sum(lens) == 512 and b["labels"][0, -lens[-1]:].eq(-100).all() \
            else lens
        assert len(real) == 1, lens  # one sample (+ the padding sub-sample)
        n_img = int((b["input_ids"] == mc.tokens.image).sum())
        assert n_img == int(b["image_grid_thw"].prod(-1).sum()) // 4
        rows.append(b)
    assert state_at["skip"] == 1, state_at
    again = build_source(cfg, mc, 0, 1)
    again.load_state_dict(state_at)
    for want in rows[1:4]:
        got = next(again)
        assert torch.equal(got["input_ids"], want["input_ids"])
        assert torch.equal(got["pixel_values"], want["pixel_values"])


def test_tiny_recipe_trains_on_a_pack_with_path_alone(pack_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python"), "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "llava_ov15.train", "--config", str(STAGE2),
           "--set", f"data.path={pack_dir}", "--set", "train.steps=2",
           "--set", f"checkpoint.dir={tmp_path / 'ckpt'}", "--set", "log.progress=log",
           "--set", "log.tensorboard=false", "--set", f"log.dir={tmp_path}"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "[train] step 2 " in p.stderr
    from llava_ov15.data.pack_manifest import PackInfo

    saved = (tmp_path / "ckpt" / "tokenizer.json").read_bytes()
    assert saved == PackInfo.load(pack_dir).tokenizer_file.read_bytes()


def test_hard_mining_on_a_pack_resumes_mid_repeat(pack_dir):
    """Hard-sample mining over the real loader (unpacked rows, keys `<pack key>#<i>`): a state
    saved while a hard row is being repeated restores to the same following rows."""
    from llava_ov15.data.pack_manifest import PackInfo
    from llava_ov15.train.data import build_source
    from llava_ov15.train.mining import HardMiningSource

    n = PackInfo.load(pack_dir).samples
    cfg = load_config(STAGE2, [f"data.path={pack_dir}"])
    mc = cfg.model_config()

    def miner():
        return HardMiningSource(build_source(cfg, mc, 0, 1), 0.25, 3.0, seed=1)

    m = miner()
    for i in range(n):  # epoch 0: losses rise with the draw order
        row = m.next_row()
        assert row["epoch"] == 0 and "#" in row["key"]
        m.record(1, [row["key"]], [float(i)])
    state = None
    for _ in range(2 * n):
        m.next_row()
        if m.state_dict()["repeat_left"] > 0:
            state = m.state_dict()
            break
    assert state is not None, "no hard row drawn in epoch 1"
    rest = [m.next_row() for _ in range(4)]
    again = miner()
    again.load_state_dict(state)
    for want in rest:
        got = again.next_row()
        assert got["key"] == want["key"]
        assert torch.equal(got["input_ids"], want["input_ids"])
        assert torch.equal(got["pixel_values"], want["pixel_values"])
