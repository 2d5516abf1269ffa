"""Checkpoints: save/load round trip, sharding, dtypes, published layout, clear key errors."""

import json

import pytest
import torch
from safetensors.torch import save_file

from llava_ov15.model import LlavaOV15Config, LlavaOV15ForConditionalGeneration, get_config
from llava_ov15.model.checkpoint import INDEX_NAME, CheckpointError, save_pretrained
from llava_ov15.model.testing import tiny_model


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


def test_round_trip_single_file_bit_exact(tmp_path):
    m = tiny_model()
    m.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    m2 = LlavaOV15ForConditionalGeneration.from_pretrained(tmp_path)
    assert m2.config == m.config
    _same(m, m2)
    assert all(p.device.type == "cpu" for p in m2.parameters())


def test_round_trip_sharded_bf16(tmp_path):
    m = tiny_model().to(torch.bfloat16)
    files = save_pretrained(m, tmp_path, max_shard_bytes=60_000)
    assert len(files) > 2
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert set(index["weight_map"]) == set(m.state_dict())
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in m.state_dict().values())
    m2 = LlavaOV15ForConditionalGeneration.from_pretrained(tmp_path)
    _same(m, m2)
    m3 = LlavaOV15ForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32)
    assert m3.lm_head.weight.dtype == torch.float32
    # saving again into the same dir replaces the shards, no stale files
    save_pretrained(m, tmp_path)
    assert not (tmp_path / INDEX_NAME).exists()
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["model.safetensors"]


def _published_style_dir(tmp_path, m):
    """Write a checkpoint the way the hub repo is laid out: remote-code config + 2 shards."""
    cfg = m.config
    hf = {
        "architectures": ["LLaVAOneVision1_5_ForConditionalGeneration"],
        "auto_map": {"AutoConfig": "configuration_llavaonevision1_5.Llavaonevision1_5Config"},
        "model_type": "llavaonevision1_5", "image_token_id": cfg.tokens.image,
        "video_token_id": cfg.tokens.video, "vocab_size": 152064, "torch_dtype": "bfloat16",
        "vision_config": {
            "model_type": "rice_vit", "depth": cfg.vision.num_layers,
            "embed_dim": cfg.vision.hidden_size, "hidden_size": cfg.vision.hidden_size,
            "hidden_act": "gelu", "intermediate_size": cfg.vision.intermediate_size,
            "num_heads": cfg.vision.num_heads, "in_channels": 3, "patch_size": 14,
            "spatial_merge_size": 2, "temporal_patch_size": 1, "layer_norm_eps": 1e-05,
            "text_hidden_size": cfg.text.hidden_size, "initializer_range": 0.02,
        },
        "text_config": {
            "model_type": "LLaVAOneVision1_5_text", "vocab_size": cfg.text.vocab_size,
            "hidden_size": cfg.text.hidden_size, "intermediate_size": cfg.text.intermediate_size,
            "num_hidden_layers": cfg.text.num_layers,
            "num_attention_heads": cfg.text.num_heads,
            "num_key_value_heads": cfg.text.num_kv_heads, "head_dim": cfg.text.head_dim,
            "hidden_act": "silu", "rms_norm_eps": 1e-06, "rope_theta": cfg.text.rope_theta,
            "max_position_embeddings": 4096, "tie_word_embeddings": False,
            "use_sliding_window": False, "sliding_window": None, "rope_scaling": None,
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(hf))
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in m.state_dict().items()}
    keys = sorted(sd)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for f, ks in halves.items():
        save_file({k: sd[k] for k in ks}, tmp_path / f, metadata={"format": "pt"})
    wm = {k: f for f, ks in halves.items() for k in ks}
    (tmp_path / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return sd


def test_loads_published_layout(tmp_path):
    m = tiny_model()
    sd = _published_style_dir(tmp_path, m)
    # the published key names, spelled out (REFERENCE §1)
    for k in ["visual.patch_embed.proj.weight", "visual.class_embedding", "visual.class_pos_emb",
              "visual.pre_layernorm.weight", "visual.blocks.0.attn.qkv.weight",
              "visual.blocks.1.attn.proj.bias", "visual.blocks.0.mlp.fc1.weight",
              "visual.blocks.0.norm2.bias", "visual.merger.ln_q.weight",
              "visual.merger.mlp.0.weight", "visual.merger.mlp.2.bias",
              "model.embed_tokens.weight", "model.layers.1.self_attn.k_norm.weight",
              "model.layers.0.mlp.gate_proj.weight", "model.layers.0.input_layernorm.weight",
              "model.layers.0.post_attention_layernorm.weight", "model.norm.weight",
              "lm_head.weight"]:
        assert k in sd, k
    loaded = LlavaOV15ForConditionalGeneration.from_pretrained(tmp_path)
    assert (loaded.config.vision, loaded.config.text) == (m.config.vision, m.config.text)
    assert (loaded.config.tokens.image, loaded.config.tokens.video) == (
        m.config.tokens.image, m.config.tokens.video)
    assert loaded.config.tokens.im_end == 151645  # not in the published schema: default
    assert loaded.config.extra["torch_dtype"] == "bfloat16"
    assert loaded.lm_head.weight.dtype == torch.bfloat16
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # re-saving keeps the published schema (model_type, sub-config keys)
    loaded.save_pretrained(tmp_path / "again")
    hf = json.loads((tmp_path / "again" / "config.json").read_text())
    assert hf["model_type"] == "llavaonevision1_5"
    assert hf["vision_config"]["depth"] == m.config.vision.num_layers
    assert hf["text_config"]["rope_theta"] == m.config.text.rope_theta
    assert LlavaOV15Config.from_pretrained(tmp_path / "again") == loaded.config


def test_bad_checkpoint_lists_offending_keys(tmp_path):
    m = tiny_model()
    m.save_pretrained(tmp_path)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    del sd["model.layers.1.mlp.up_proj.weight"]
    sd["visual.extra.weight"] = torch.zeros(2)
    sd["model.norm.weight"] = torch.zeros(7)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        LlavaOV15ForConditionalGeneration.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "missing keys (1): model.layers.1.mlp.up_proj.weight" in msg
    assert "unexpected keys (1): visual.extra.weight" in msg
    assert "shape mismatch model.norm.weight: checkpoint (7,)" in msg


def test_presets_match_reference_numbers():
    c8, c4 = get_config("llava-ov-1.5-8b"), get_config("llava-ov-1.5-4b")
    assert (c8.text.hidden_size, c8.text.num_layers, c8.text.intermediate_size) == (4096, 36, 12288)
    assert (c4.text.hidden_size, c4.text.intermediate_size, c4.text.rope_theta) == (2560, 9728, 5e6)
    assert c8.text.rope_theta == 1e6 and c8.text.vocab_size == 151936
    assert (c8.text.num_heads, c8.text.num_kv_heads, c8.text.head_dim) == (32, 8, 128)
    v = c8.vision
    assert (v.hidden_size, v.num_layers, v.num_heads, v.intermediate_size) == (1024, 24, 16, 4096)
    assert v.patch_dim == 588 and c4.vision.out_hidden_size == 2560
    assert (c8.tokens.image, c8.tokens.im_end, c8.tokens.vision_start) == (151655, 151645, 151652)
    # parameter count of the 8B preset, counted on the meta device (no memory)
    with torch.device("meta"):
        n = sum(p.numel() for p in LlavaOV15ForConditionalGeneration(c8).parameters())
    assert 8.5e9 < n < 8.9e9
    assert LlavaOV15Config.from_hf_dict(c8.to_hf_dict()) == c8


def test_config_keeps_unmodelled_sub_config_keys():
    from dataclasses import replace

    d = get_config("tiny").to_hf_dict()
    d["text_config"].update(layer_types=["full_attention"] * 2, sliding_window=None,
                            initializer_range=0.02, rope_scaling={"rope_type": "default",
                                                                  "rope_theta": 1e4})
    d["vision_config"].update(initializer_range=0.02, num_hidden_layers=2)
    back = LlavaOV15Config.from_hf_dict(d).to_hf_dict()
    assert back == d
    # a field changed after loading is not contradicted by a kept alias or rope dict
    c = LlavaOV15Config.from_hf_dict(d)
    c = replace(c, vision=replace(c.vision, num_layers=3),
                text=replace(c.text, rope_theta=5e6))
    out = c.to_hf_dict()
    assert out["vision_config"]["num_hidden_layers"] == out["vision_config"]["depth"] == 3
    assert out["text_config"]["rope_scaling"]["rope_theta"] == 5e6
    assert out["text_config"]["layer_types"] == ["full_attention"] * 2
    assert LlavaOV15Config.from_hf_dict(out) == c


def test_tied_embeddings_round_trip(tmp_path):
    from llava_ov15.model.config import tiny_config

    cfg = tiny_config()
    cfg.text.tie_word_embeddings = True
    m = LlavaOV15ForConditionalGeneration(cfg)
    m.init_weights(seed=1)
    m.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()
    m2 = LlavaOV15ForConditionalGeneration.from_pretrained(tmp_path)
    assert m2.lm_head.weight is m2.model.embed_tokens.weight
    _same(m, m2)


_RSS_SCRIPT = """
import sys
import torch
from llava_ov15.model import LlavaOV15ForConditionalGeneration, LlavaOV15Config


def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024


open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
base = status("VmRSS")
if sys.argv[2] == "lazy":
    m = LlavaOV15ForConditionalGeneration.from_pretrained(sys.argv[1])
else:  # the naive way: init the model, read a full state dict, copy it in
    import glob
    from safetensors.torch import load_file
    m = LlavaOV15ForConditionalGeneration(LlavaOV15Config.from_pretrained(sys.argv[1]))
    sd = {}
    for f in glob.glob(sys.argv[1] + "/*.safetensors"):
        sd.update(load_file(f))
    m.load_state_dict(sd)
print(status("VmHWM") - base)
"""


def test_lazy_load_peak_memory_about_one_copy(tmp_path):
    """Loading needs ~1x the checkpoint in RAM (meta init + one tensor at a time), not 2x."""
    import subprocess
    import sys

    from llava_ov15.model.config import tiny_config

    cfg = tiny_config(vocab_size=24_000, text_hidden=512, layers=2)
    with torch.device("meta"):
        m = LlavaOV15ForConditionalGeneration(cfg)
    m = m.to_empty(device="cpu")
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(0.5)
    m.save_pretrained(tmp_path, max_shard_bytes=40 * 2**20)
    size = sum(p.numel() * 4 for p in m.parameters())
    assert size > 100 * 2**20
    del m
    grew = {}
    for mode in ("lazy", "naive"):
        out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path), mode],
                             capture_output=True, text=True, check=True, timeout=120)
        grew[mode] = int(out.stdout.strip().splitlines()[-1]) / size
    # lazy ≈ 1x anonymous memory + file-backed pages of the mmapped shards still resident
    # (~0.4-0.7x: kernel-dependent; 1.68 vs naive 2.13 on one CI machine, under 1.6 on another)
    assert 0.9 < grew["lazy"] < 1.8, grew
    assert grew["naive"] > grew["lazy"] + 0.3, grew  # the measurement can tell them apart
