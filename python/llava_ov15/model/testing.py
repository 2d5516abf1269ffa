"""Test/benchmark helpers: tiny models, transformers peers with our weights, toy tokenizer.

transformers is imported lazily; nothing here is needed for training or inference.
"""

from __future__ import annotations

import torch

from .config import LlavaOV15Config, TextConfig, VisionConfig, tiny_config
from .llava import LlavaOV15ForConditionalGeneration


def tiny_model(seed: int = 0, std: float = 0.1, **kw) -> LlavaOV15ForConditionalGeneration:
    torch.manual_seed(seed)
    m = LlavaOV15ForConditionalGeneration(tiny_config(**kw))
    m.init_weights(std=std, seed=seed)
    return m.eval()


def hf_qwen3(cfg: TextConfig, state_dict: dict[str, torch.Tensor] | None = None):
    """transformers' Qwen3ForCausalLM of the same shape (same key names as ours)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    hc = Qwen3Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings, attention_bias=False,
    )
    hc._attn_implementation = "sdpa"
    m = Qwen3ForCausalLM(hc)
    if state_dict is not None:
        m.load_state_dict(state_dict, strict=True)
    return m.eval()


def hf_mlcd(cfg: VisionConfig, visual_state: dict[str, torch.Tensor] | None = None):
    """transformers' MLCDVisionModel with our vision weights (`visual.` prefix stripped).

    MLCD has separate q/k/v projections and the same RoPE/CLS scheme; our fused qkv rows are
    [Q; K; V].
    """
    from transformers import MLCDVisionConfig, MLCDVisionModel

    hc = MLCDVisionConfig(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        patch_size=cfg.patch_size, image_size=cfg.patch_size * 4,
        layer_norm_eps=cfg.layer_norm_eps, hidden_act="gelu",
        rope_parameters={"rope_theta": cfg.rope_theta, "rope_type": "axial"},
    )
    hc._attn_implementation = "sdpa"
    m = MLCDVisionModel(hc)
    if visual_state is not None:
        m.load_state_dict(ours_to_mlcd(visual_state, cfg), strict=False)
    return m.eval()


def ours_to_mlcd(sd: dict[str, torch.Tensor], cfg: VisionConfig) -> dict[str, torch.Tensor]:
    out = {
        "embeddings.class_embedding": sd["class_embedding"],
        "embeddings.patch_embedding.weight": sd["patch_embed.proj.weight"],
        "class_pos_emb": sd["class_pos_emb"],
        "pre_layrnorm.weight": sd["pre_layernorm.weight"],
        "pre_layrnorm.bias": sd["pre_layernorm.bias"],
    }
    for i in range(cfg.num_layers):
        a, b = f"blocks.{i}.", f"encoder.layers.{i}."
        for ours, theirs in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"),
                             ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"),
                             ("attn.proj", "self_attn.out_proj")):
            for p in ("weight", "bias"):
                out[f"{b}{theirs}.{p}"] = sd[f"{a}{ours}.{p}"]
        for p in ("weight", "bias"):
            q, k, v = sd[f"{a}attn.qkv.{p}"].chunk(3, dim=0)
            out[f"{b}self_attn.q_proj.{p}"] = q
            out[f"{b}self_attn.k_proj.{p}"] = k
            out[f"{b}self_attn.v_proj.{p}"] = v
    return out


def word_tokenizer(cfg: LlavaOV15Config, words: list[str] = ()):
    """A word-level `tokenizers.Tokenizer` covering the whole vocab, specials at cfg's ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    from .processor import (
        ENDOFTEXT,
        IM_END,
        IM_START,
        IMAGE_PAD,
        VIDEO_PAD,
        VISION_END,
        VISION_START,
    )

    t = cfg.tokens
    specials = {ENDOFTEXT: t.endoftext, IM_START: t.im_start, IM_END: t.im_end,
                VISION_START: t.vision_start, VISION_END: t.vision_end, IMAGE_PAD: t.image,
                VIDEO_PAD: t.video}
    vocab = {"[UNK]": 0}
    taken = set(specials.values()) | {0}
    free = (i for i in range(cfg.text.vocab_size) if i not in taken)
    template = ["system", "user", "assistant", "You", "are", "a", "helpful", "."]
    for w in [*template, *words, *(f"w{i}" for i in range(cfg.text.vocab_size))]:
        if w in vocab:
            continue
        try:
            vocab[w] = next(free)
        except StopIteration:
            break
    vocab.update(specials)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def save_tiny_checkpoint(path, seed: int = 3, std: float = 0.15, words: list[str] = (),
                         **kw):
    """A tiny random model saved as an HF-layout directory (config.json, model.safetensors,
    word-level tokenizer.json) that `load_pipeline` / `--model DIR` accept. Returns the path."""
    from pathlib import Path

    path = Path(path)
    model = tiny_model(seed=seed, std=std, **kw)
    model.save_pretrained(path)
    word_tokenizer(model.config, list(words)).save(str(path / "tokenizer.json"))
    return path
