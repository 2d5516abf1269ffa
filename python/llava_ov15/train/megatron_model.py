"""LLaVA-OV-1.5 under megatron-core: Qwen3 as a `GPTModel`, RICE-ViT + merger on the first stage.

* LLM: megatron `GPTModel` (embedding, `TransformerBlock`, output layer) with a Qwen3 layer spec:
  RMSNorm pre-norms, q/k RMSNorm over head_dim, GQA (`num_query_groups`), SwiGLU
  (`gated_linear_unit` + SiLU), no biases, untied output layer, RoPE with the config's theta.
  TransformerEngine modules when TE is installed on a CUDA machine, megatron's local modules
  otherwise (same checkpoint keys thanks to the spec's `sharded_state_dict_keys_map`).
* Vision tower + merger: our plain PyTorch `VisionTower` (TP=1, replicated over TP ranks; its
  grads are identical on all TP ranks because its output feeds a replicated activation) on the
  first pipeline stage only. Its features replace the `<|image_pad|>` embeddings in order.
* Packed rows, three attention paths (`parallel.attention`, see `resolve_attention`):
  - te: the micro-batch is flattened to one [1, B·S] row and handed to TE's thd attention with
    `PackedSeqParams(cu_seqlens)`;
  - flex: megatron's local layers with `FlexCoreAttention` (PyTorch FlexAttention, a
    document-causal BlockMask from the segment ids; `flex_core_attention.py`);
  - mask: megatron's DotProductAttention with an explicit [B, 1, S, S] block-causal mask.
  flex and mask take RoPE at the per-document `position_ids`. All never attend across
  sub-samples and restart positions per sub-sample. The vision tower uses FlexAttention too
  under flex (and under te when flash-attn is absent).
* The last stage returns per-token cross entropy [B, S] (vocab-parallel, fp32), targets shifted
  inside and never crossing a sub-sample boundary. With `loss_chunk_tokens` > 0 the output layer
  and the CE run fused over chunks of the labelled tokens (`chunked_ce.py`), never holding the
  full logits; 0 keeps the plain logits + `vocab_parallel_cross_entropy` path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel
from megatron.core.enums import ModelType
from megatron.core.models.gpt import GPTModel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule

from llava_ov15.model.config import LlavaOV15Config
from llava_ov15.model.vision import VisionTower

IGNORE_INDEX = -100
ADAPTER_PREFIX = "vision.merger."


def te_available() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


ATTENTION = ("auto", "te", "flex", "mask")
RECOMPUTE = ("off", "full", "selective")


def resolve_attention(attention: str = "auto") -> str:
    """"auto" -> "te" on CUDA with TransformerEngine, else "flex" on CUDA, else "mask" (CPU:
    torch's FlexAttention has no CPU backward of its own and its eager form materialises the
    scores like the mask path does, so the long-tested mask path stays the CPU default)."""
    if attention not in ATTENTION:
        raise ValueError(f"parallel.attention must be one of {ATTENTION}, got {attention!r}")
    if attention == "te" and not te_available():
        raise RuntimeError("parallel.attention=te needs TransformerEngine on a CUDA machine")
    if attention == "flex":
        from llava_ov15.model import flex_attention

        if not flex_attention.available():
            raise RuntimeError("parallel.attention=flex needs torch >= 2.5 (FlexAttention)")
    if attention != "auto":
        return attention
    if te_available():
        return "te"
    return "flex" if torch.cuda.is_available() else "mask"


def use_te(attention: str = "auto") -> bool:
    return resolve_attention(attention) == "te"


def recompute_mode(recompute: bool | str | None) -> str:
    """YAML's true/false (the older boolean option) -> "full"/"off"; strings are checked."""
    if recompute is None or isinstance(recompute, bool):
        return "full" if recompute else "off"
    if recompute not in RECOMPUTE:
        raise ValueError(f"train.recompute must be one of {RECOMPUTE} (or true/false), "
                         f"got {recompute!r}")
    return recompute


def transformer_config(mc: LlavaOV15Config, *, tp: int = 1, pp: int = 1, bf16: bool = False,
                       recompute: bool | str = "off", init_std: float = 0.02,
                       token_mean_loss: bool = False, on_gpu: bool | None = None,
                       ) -> TransformerConfig:
    t = mc.text
    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    kw = {}
    mode = recompute_mode(recompute)
    if mode == "full":
        kw.update(recompute_granularity="full", recompute_method="uniform",
                  recompute_num_layers=1)
    elif mode == "selective":  # megatron checkpoints the layer spec's core_attention
        kw.update(recompute_granularity="selective", recompute_modules=["core_attn"])
    return TransformerConfig(
        num_layers=t.num_layers, hidden_size=t.hidden_size, num_attention_heads=t.num_heads,
        num_query_groups=t.num_kv_heads, kv_channels=t.head_dim,
        ffn_hidden_size=t.intermediate_size, gated_linear_unit=True, activation_func=F.silu,
        add_bias_linear=False, add_qkv_bias=False, normalization="RMSNorm",
        layernorm_epsilon=t.rms_norm_eps, qk_layernorm=True, hidden_dropout=0.0,
        attention_dropout=0.0, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        params_dtype=torch.bfloat16 if bf16 else torch.float32, bf16=bf16,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        init_method_std=init_std, use_cpu_initialization=True,
        # CUDA-only fusions stay off on CPU (REFERENCE §7); harmless defaults on GPU.
        bias_dropout_fusion=on_gpu, apply_rope_fusion=False, gradient_accumulation_fusion=False,
        masked_softmax_fusion=on_gpu, persist_layer_norm=on_gpu, sequence_parallel=False,
        calculate_per_token_loss=token_mean_loss, **kw,
    )


def layer_spec(attention: str | bool):
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    attention = _attention_name(attention)
    if attention == "te":
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    spec = get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
    if attention == "flex":
        from .flex_core_attention import FlexCoreAttention

        spec.submodules.self_attention.submodules.core_attention = FlexCoreAttention
    return spec


def _attention_name(attention: str | bool) -> str:
    """build_model's older boolean `te` argument -> "te"/"mask"."""
    if isinstance(attention, bool):
        return "te" if attention else "mask"
    if attention not in ("te", "flex", "mask"):
        raise ValueError(f"attention must be te, flex or mask (resolve 'auto' first), "
                         f"got {attention!r}")
    return attention


def _vision_attention(attention: str) -> str:
    if attention == "flex":
        return "flex"
    if attention == "te":  # TE does not serve our vision tower: flash-attn varlen, else flex
        from llava_ov15.model import attention as va

        return "sdpa" if va._flash_varlen is not None else "flex"
    return "sdpa"


def segment_ids(cu_seqlens: torch.Tensor, b: int, s: int) -> torch.Tensor:
    """[B, S] sub-sample index of every token (cu_seqlens over the flattened B·S tokens)."""
    idx = torch.arange(b * s, device=cu_seqlens.device)
    return torch.bucketize(idx, cu_seqlens[1:].long(), right=True).view(b, s)


def block_causal_mask(seg: torch.Tensor) -> torch.Tensor:
    """[B, 1, S, S] bool, True = masked out (megatron convention)."""
    s = seg.shape[1]
    allowed = seg[:, :, None] == seg[:, None, :]
    allowed &= torch.ones(s, s, dtype=torch.bool, device=seg.device).tril()
    return ~allowed[:, None]


def shifted_targets(labels: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Next-token targets [B, S]: labels shifted left, -100 at row ends and sub-sample ends."""
    tgt = torch.full_like(labels, IGNORE_INDEX)
    tgt[:, :-1] = labels[:, 1:]
    tgt[:, :-1][seg[:, 1:] != seg[:, :-1]] = IGNORE_INDEX
    return tgt


class LlavaMegatron(MegatronModule):
    """One pipeline stage of the model (vision only on the first)."""

    def __init__(self, config: TransformerConfig, mc: LlavaOV15Config, *,
                 attention: str | bool = "mask", pre_process: bool = True,
                 post_process: bool = True, loss_chunk_tokens: int = 0, te: bool | None = None):
        super().__init__(config=config)
        attention = _attention_name(te if te is not None else attention)
        self.mc, self.attention, self.te = mc, attention, attention == "te"
        self.loss_chunk_tokens = loss_chunk_tokens
        self.pre_process, self.post_process = pre_process, post_process
        self.vision = None
        if pre_process:
            self.vision = VisionTower(mc.vision)
            self.vision.to(config.params_dtype)
            self.vision.attention = _vision_attention(attention)
            self.vision.set_recompute(config.recompute_granularity or "off")
        self.language = GPTModel(
            config, layer_spec(attention), vocab_size=mc.text.vocab_size,
            max_sequence_length=mc.text.max_position_embeddings, pre_process=pre_process,
            post_process=post_process, share_embeddings_and_output_weights=False,
            position_embedding_type="rope", rotary_base=int(mc.text.rope_theta),
            rotary_percent=1.0)
        self.share_embeddings_and_output_weights = False
        self.model_type = ModelType.encoder_or_decoder

    def set_input_tensor(self, input_tensor) -> None:
        self.language.set_input_tensor(input_tensor)

    def forward(self, input_ids, position_ids, cu_seqlens, labels=None, pixel_values=None,
                image_grid_thw=None, pooled: dict | None = None):
        """`pooled` (a dict, for the contrastive term) receives "vision" (merged vision tokens
        [N_img, H] in <|image_pad|> order) on the first stage and "hidden" (final-norm hidden
        states [S, B, H]) on the last, both still in the autograd graph."""
        b, s = input_ids.shape
        lang = self.language
        seg = segment_ids(cu_seqlens, b, s)
        decoder_input = None
        if self.pre_process:
            emb = lang.embedding(input_ids=input_ids, position_ids=None)  # [S, B, H]
            is_img = input_ids == self.mc.tokens.image  # [B, S]: features fill row by row
            if pixel_values is not None and pixel_values.numel():
                feats = self.vision(pixel_values.to(self.config.params_dtype), image_grid_thw)
                if feats.shape[0] != int(is_img.sum()):
                    raise ValueError(f"{feats.shape[0]} image features for "
                                     f"{int(is_img.sum())} <|image_pad|> tokens")
                if pooled is not None:
                    pooled["vision"] = feats
                emb = emb.transpose(0, 1).masked_scatter(is_img[..., None], feats.to(emb.dtype))
                emb = emb.transpose(0, 1).contiguous()
            elif bool(is_img.any()):
                raise ValueError("<|image_pad|> tokens but no pixel_values")
            decoder_input = emb
        if self.te:
            # thd: all rows as one sequence of B·S tokens split by cu_seqlens.
            if decoder_input is not None:
                decoder_input = decoder_input.transpose(0, 1).reshape(b * s, 1, -1)
            cu = cu_seqlens.to(torch.int32)
            max_len = int((cu[1:] - cu[:-1]).max())
            psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                                  max_seqlen_q=max_len, max_seqlen_kv=max_len)
            rope = lang.rotary_pos_emb(max_len, packed_seq=True)
            h = lang.decoder(hidden_states=decoder_input, attention_mask=None,
                             rotary_pos_emb=rope, packed_seq_params=psp)
            if self.post_process:
                h = h.view(b, s, -1).transpose(0, 1)
        else:
            table = lang.rotary_pos_emb(int(position_ids.max()) + 1)  # [L, 1, 1, D]
            rope = table[:, 0, 0][position_ids.transpose(0, 1)].unsqueeze(2)  # [S, B, 1, D]
            # flex: the [B, S] segment ids travel as the mask (FlexCoreAttention builds its
            # BlockMask from them); mask: the explicit [B, 1, S, S] block-causal mask.
            mask = seg if self.attention == "flex" else block_causal_mask(seg)
            h = lang.decoder(hidden_states=decoder_input, attention_mask=mask,
                             rotary_pos_emb=rope)
        if not self.post_process:
            return h
        if pooled is not None:
            pooled["hidden"] = h
        if labels is not None and self.loss_chunk_tokens > 0:
            return self._chunked_loss(h, labels, seg)
        logits, _ = lang.output_layer(h)  # [S, B, V/tp]
        if labels is None:  # inference / tests: full-vocab logits [B, S, V]
            full = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
            return full.transpose(0, 1)
        tgt = shifted_targets(labels, seg)
        valid = tgt != IGNORE_INDEX
        loss = tensor_parallel.vocab_parallel_cross_entropy(
            logits.float(), tgt.clamp(min=0).transpose(0, 1).contiguous())
        return loss.transpose(0, 1) * valid  # [B, S] per-token CE, 0 where not trained

    def _chunked_loss(self, h: torch.Tensor, labels: torch.Tensor, seg: torch.Tensor):
        """Same [B, S] per-token CE as the plain path, from the labelled tokens only, through
        the fused chunked output layer + CE (unlabelled tokens cost nothing and get 0)."""
        from .chunked_ce import chunked_vocab_parallel_cross_entropy

        tgt = shifted_targets(labels, seg).transpose(0, 1)  # [S, B]
        valid = tgt != IGNORE_INDEX
        per_tok = chunked_vocab_parallel_cross_entropy(
            h[valid], self.language.output_layer.weight, tgt[valid], self.loss_chunk_tokens)
        loss = torch.zeros(tgt.shape, dtype=torch.float32, device=h.device)
        loss = loss.masked_scatter(valid, per_tok)
        return loss.transpose(0, 1)


def build_model(mc: LlavaOV15Config, config: TransformerConfig,
                attention: str | bool = "mask", loss_chunk_tokens: int = 0,
                te: bool | None = None) -> LlavaMegatron:
    """`attention`: "te" | "flex" | "mask" (`resolve_attention`); `te=` is the older bool."""
    return LlavaMegatron(config, mc, attention=attention, te=te,
                         pre_process=ps.is_pipeline_first_stage(),
                         post_process=ps.is_pipeline_last_stage(),
                         loss_chunk_tokens=loss_chunk_tokens)


def apply_freezing(model: torch.nn.Module, trainable: list[str] | None) -> int:
    """requires_grad only for parameters whose name starts with a trainable prefix."""
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad_(trainable is None or any(name.startswith(t) for t in trainable))
        n += p.requires_grad
    return n


# ---- HF <-> megatron names (TP=1, PP=1, local spec) -----------------------------------------
def hf_to_megatron(hf: dict[str, torch.Tensor], mc: LlavaOV15Config) -> dict[str, torch.Tensor]:
    """Published HF keys -> `LlavaMegatron` (TP=1, local spec) state-dict keys."""
    t = mc.text
    out: dict[str, torch.Tensor] = {}
    for k, v in hf.items():
        if k.startswith("visual."):
            out["vision." + k[len("visual."):]] = v
    out["language.embedding.word_embeddings.weight"] = hf["model.embed_tokens.weight"]
    out["language.decoder.final_layernorm.weight"] = hf["model.norm.weight"]
    out["language.output_layer.weight"] = hf["lm_head.weight"]
    g, d = t.num_kv_heads, t.head_dim
    per = t.num_heads // g
    for i in range(t.num_layers):
        a, m = f"model.layers.{i}.", f"language.decoder.layers.{i}."
        q = hf[a + "self_attn.q_proj.weight"].view(g, per * d, -1)
        k = hf[a + "self_attn.k_proj.weight"].view(g, d, -1)
        v = hf[a + "self_attn.v_proj.weight"].view(g, d, -1)
        out[m + "self_attention.linear_qkv.weight"] = torch.cat([q, k, v], 1).flatten(0, 1)
        out[m + "self_attention.linear_proj.weight"] = hf[a + "self_attn.o_proj.weight"]
        out[m + "self_attention.q_layernorm.weight"] = hf[a + "self_attn.q_norm.weight"]
        out[m + "self_attention.k_layernorm.weight"] = hf[a + "self_attn.k_norm.weight"]
        out[m + "input_layernorm.weight"] = hf[a + "input_layernorm.weight"]
        out[m + "pre_mlp_layernorm.weight"] = hf[a + "post_attention_layernorm.weight"]
        out[m + "mlp.linear_fc1.weight"] = torch.cat(
            [hf[a + "mlp.gate_proj.weight"], hf[a + "mlp.up_proj.weight"]], 0)
        out[m + "mlp.linear_fc2.weight"] = hf[a + "mlp.down_proj.weight"]
    return out


def megatron_to_hf(sd: dict[str, torch.Tensor], mc: LlavaOV15Config) -> dict[str, torch.Tensor]:
    """Inverse of `hf_to_megatron` (extra megatron state such as `_extra_state` is dropped)."""
    t = mc.text
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith("vision."):
            out["visual." + k[len("vision."):]] = v
    out["model.embed_tokens.weight"] = sd["language.embedding.word_embeddings.weight"]
    out["model.norm.weight"] = sd["language.decoder.final_layernorm.weight"]
    out["lm_head.weight"] = sd["language.output_layer.weight"]
    g, d = t.num_kv_heads, t.head_dim
    per = t.num_heads // g
    for i in range(t.num_layers):
        a, m = f"model.layers.{i}.", f"language.decoder.layers.{i}."
        qkv = sd[m + "self_attention.linear_qkv.weight"].view(g, (per + 2) * d, -1)
        q, k, v = qkv.split([per * d, d, d], 1)
        out[a + "self_attn.q_proj.weight"] = q.reshape(-1, q.shape[-1])
        out[a + "self_attn.k_proj.weight"] = k.reshape(-1, k.shape[-1])
        out[a + "self_attn.v_proj.weight"] = v.reshape(-1, v.shape[-1])
        out[a + "self_attn.o_proj.weight"] = sd[m + "self_attention.linear_proj.weight"]
        out[a + "self_attn.q_norm.weight"] = sd[m + "self_attention.q_layernorm.weight"]
        out[a + "self_attn.k_norm.weight"] = sd[m + "self_attention.k_layernorm.weight"]
        out[a + "input_layernorm.weight"] = sd[m + "input_layernorm.weight"]
        out[a + "post_attention_layernorm.weight"] = sd[m + "pre_mlp_layernorm.weight"]
        gate, up = sd[m + "mlp.linear_fc1.weight"].chunk(2, 0)
        out[a + "mlp.gate_proj.weight"] = gate
        out[a + "mlp.up_proj.weight"] = up
        out[a + "mlp.down_proj.weight"] = sd[m + "mlp.linear_fc2.weight"]
    return {k: v.contiguous() for k, v in out.items()}
