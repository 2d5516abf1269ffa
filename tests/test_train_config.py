"""Trainer config: YAML -> typed dataclasses, --set overrides, validation naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from llava_ov15.train.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs").glob("*/*.yaml"))


def test_recipes_exist_for_every_size_and_stage():
    names = {(p.parent.name, p.stem) for p in RECIPES}
    for size in ("llava-ov-1.5-4b", "llava-ov-1.5-8b", "tiny"):
        for stage in ("stage1_alignment", "stage1.5_mid_training", "stage2_instruct"):
            assert (size, stage) in names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipes_validate(path):
    world = 1 if path.parent.name == "tiny" else 8
    # the big recipes name data and checkpoints that are not here: check the file alone
    cfg = load_config(path, world_size=world, resolve=path.parent.name == "tiny")
    stage = {"stage1_alignment": "1", "stage1.5_mid_training": "1.5",
             "stage2_instruct": "2"}[path.stem]
    assert cfg.train.stage == stage
    if path.parent.name != "tiny":
        t = cfg.train
        assert (t.lr, t.min_lr, t.adam_eps, t.clip_grad, t.bf16, t.recompute) == (
            {"1": 1e-4}.get(stage, 1e-5), 1e-6, 1e-5, 1.0, True,
            "selective" if stage == "1" else "full")
        assert t.loss_chunk_tokens == 2048
        assert cfg.parallel.distributed_optimizer and cfg.data.micro_batch_size == 1
        assert cfg.data.packed == (stage != "2")
        if stage == "1.5":
            assert (t.weight_decay, t.adam_beta2) == (0.01, 0.95)


def test_set_overrides_and_types(tmp_path):
    cfg = load_config(ROOT / "configs/tiny/stage1_alignment.yaml",
                      ["train.lr=1e-5", "parallel.tp=2", "train.stage=1.5",
                       "data.image_sizes=[28, 56]"])
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)
    assert cfg.parallel.tp == 2 and cfg.train.stage == "1.5"
    assert cfg.data.image_sizes == [28, 56]


@pytest.mark.parametrize("override, key", [
    ("train.lrr=1", "train.lrr"),
    ("bogus.x=1", "bogus"),
    ("model.text.nope=3", None),
    ("train.steps=abc", "train.steps"),
    ("train.stage=3", "train.stage"),
    ("train.loss=sum", "train.loss"),
    ("parallel.tp=3", "parallel.tp"),  # 4 heads / 2 kv heads
    ("parallel.pp=4", "parallel.pp"),  # 2 layers
    ("train.global_batch_size=3", "train.global_batch_size"),
])
def test_invalid_configs_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "configs/tiny/stage1.5_mid_training.yaml", [override],
                    world_size=2 if "global_batch" in override else None)
    if key:
        assert key in str(e.value)


def test_world_size_layout_checks():
    path = ROOT / "configs/tiny/stage1.5_mid_training.yaml"
    with pytest.raises(ConfigError, match="parallel.tp"):
        load_config(path, ["parallel.tp=2"], world_size=3)
    with pytest.raises(ConfigError, match="parallel.dp"):
        load_config(path, ["parallel.dp=4"], world_size=2)
    with pytest.raises(ConfigError, match="parallel.pp"):  # stage 1 trains nothing past stage 0
        load_config(ROOT / "configs/tiny/stage1_alignment.yaml", ["parallel.pp=2"], world_size=2)
    cfg = load_config(path, ["parallel.tp=2"], world_size=2)
    assert cfg.parallel.tp == 2


def test_cli_reports_config_errors(tmp_path):
    from llava_ov15.train.__main__ import main

    assert main(["--config", str(ROOT / "configs/tiny/stage1_alignment.yaml"),
                 "--set", "train.lrr=1"]) == 2
    assert main(["--config", str(ROOT / "configs/tiny/stage1_alignment.yaml"),
                 "--print-config"]) == 0


def test_cpu_compat_is_a_no_op_on_gpu(monkeypatch):
    import torch

    from llava_ov15.train import cpu_compat

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    before = torch.cuda.current_device
    assert cpu_compat.install() is False
    assert torch.cuda.current_device is before
    assert cpu_compat.MEGATRON_CORE_VERSION == "0.16.1"


TINY = ROOT / "configs/tiny/stage1.5_mid_training.yaml"


def test_model_overrides_are_type_checked():
    cfg = load_config(TINY, ['model.text.rope_theta="5.0e6"', "model.vision.num_layers=1.0"])
    assert cfg.model.text["rope_theta"] == 5.0e6 and cfg.model_config().text.rope_theta == 5.0e6
    assert cfg.model_config().vision.num_layers == 1
    with pytest.raises(ConfigError, match=r"unknown config key model\.text\.hidden\b"):
        load_config(TINY, ["model.text.hidden=3"])
    with pytest.raises(ConfigError, match=r"model\.text\.num_layers: expected int"):
        load_config(TINY, ["model.text.num_layers=abc"])
    with pytest.raises(ConfigError, match=r"model\.preset"):
        load_config(TINY, ["model.preset=nope"])


def test_synthetic_and_packed_pixel_defaults_are_the_processors():
    from llava_ov15.data import preprocess
    from llava_ov15.model import processor

    cfg = load_config(TINY)
    assert (cfg.data.min_pixels, cfg.data.max_pixels) == (processor.MIN_PIXELS,
                                                          processor.MAX_PIXELS) == (3136, 2_560_000)
    assert (preprocess.MIN_PIXELS, preprocess.MAX_PIXELS) == (3136, 2_560_000)


def test_vocabulary_too_small_for_the_tokenizer_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model\.text\.vocab_size=320 is too small"):
        load_config(TINY, ["data.tokenizer=qwen", "model.fit_tokenizer=false"])
    with pytest.raises(ConfigError, match=r"model\.tokens\.image=318 but the tokenizer qwen gives "
                                          r"<\|image_pad\|> .* model\.tokens\.published=true"):
        load_config(TINY, ["data.tokenizer=qwen", "model.fit_tokenizer=false",
                           "model.text.vocab_size=151936"])
    fitted = load_config(TINY, ["data.tokenizer=qwen"]).model_config()  # fit_tokenizer: true
    assert fitted.text.vocab_size % 128 == 0 and fitted.text.vocab_size >= 151_665
    assert fitted.tokens.image == 151655 and fitted.tokens.im_end == 151645


def test_checkpoint_load_brings_its_stored_architecture(tmp_path):
    import json

    from llava_ov15.model.config import tiny_config

    stored = tiny_config(text_hidden=32, vision_hidden=16)
    ck = tmp_path / "ckpt"
    (ck / "iter_0000002").mkdir(parents=True)
    (ck / "latest").write_text("iter_0000002\n")
    (ck / "iter_0000002" / "llava_config.json").write_text(json.dumps(stored.to_hf_dict()))
    mc = load_config(TINY, [f"checkpoint.load={ck}"]).model_config()
    assert (mc.text.hidden_size, mc.vision.hidden_size) == (32, 16)
    with pytest.raises(ConfigError, match=r"model\.preset=tiny has text\.hidden_size=64 .* "
                                          r"text\.hidden_size=32"):
        load_config(TINY, [f"checkpoint.load={ck}", "model.preset=tiny"])
    with pytest.raises(ConfigError, match=r"checkpoint\.load: no such directory"):
        load_config(TINY, [f"checkpoint.load={tmp_path / 'nope'}"])


def test_missing_pack_folder_is_a_one_line_error(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT / "python"), "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([sys.executable, "-m", "llava_ov15.train", "--config", str(TINY),
                        "--set", f"data.path={tmp_path / 'nope'}"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert p.returncode == 2
    assert p.stderr.strip() == f"config error: data.path: no such directory {tmp_path / 'nope'}"
