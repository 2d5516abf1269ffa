"""LLaVA-OV-1.5 under megatron-core: Qwen3 as a `GPTModel`, RICE-ViT + merger on the first stage.

* LLM: megatron `GPTModel` (embedding, `TransformerBlock`, output layer) with a Qwen3 layer spec:
  RMSNorm pre-norms, q/k RMSNorm over head_dim, GQA (`num_query_groups`), SwiGLU
  (`gated_linear_unit` + SiLU), no biases, untied output layer, RoPE with the config's theta.
  TransformerEngine modules when TE is installed on a CUDA machine, megatron's local modules
  otherwise (same checkpoint keys thanks to the spec's `sharded_state_dict_keys_map`).
* Vision tower + merger: our plain PyTorch `VisionTower` (TP=1, replicated over TP ranks; its
  grads are identical on all TP ranks because its output feeds a replicated activation) on the
  first pipeline stage only. Its features replace the `<|image_pad|>` embeddings in order.
* Packed rows: on CUDA with TE, the micro-batch is flattened to one [1, B·S] row and handed to
  TE's thd attention with `PackedSeqParams(cu_seqlens)`; otherwise attention gets a block-diagonal
  causal mask and RoPE is taken at the per-document `position_ids`. Both never attend across
  sub-samples and restart positions per sub-sample.
* The last stage returns per-token cross entropy [B, S] (vocab-parallel, fp32), targets shifted
  inside and never crossing a sub-sample boundary.
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


def use_te(attention: str = "auto") -> bool:
    if attention == "mask":
        return False
    if attention == "te" and not te_available():
        raise RuntimeError("parallel.attention=te needs TransformerEngine on a CUDA machine")
    return te_available()


def transformer_config(mc: LlavaOV15Config, *, tp: int = 1, pp: int = 1, bf16: bool = False,
                       recompute: bool = False, init_std: float = 0.02,
                       token_mean_loss: bool = False, on_gpu: bool | None = None,
                       ) -> TransformerConfig:
    t = mc.text
    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    kw = {}
    if recompute:
        kw.update(recompute_granularity="full", recompute_method="uniform",
                  recompute_num_layers=1)
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


def layer_spec(te: bool):
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    if te:
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    return get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")


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

    def __init__(self, config: TransformerConfig, mc: LlavaOV15Config, *, te: bool = False,
                 pre_process: bool = True, post_process: bool = True):
        super().__init__(config=config)
        self.mc, self.te = mc, te
        self.pre_process, self.post_process = pre_process, post_process
        self.vision = None
        if pre_process:
            self.vision = VisionTower(mc.vision)
            self.vision.to(config.params_dtype)
        self.language = GPTModel(
            config, layer_spec(te), vocab_size=mc.text.vocab_size,
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
            h = lang.decoder(hidden_states=decoder_input, attention_mask=block_causal_mask(seg),
                             rotary_pos_emb=rope)
        if not self.post_process:
            return h
        if pooled is not None:
            pooled["hidden"] = h
        logits, _ = lang.output_layer(h)  # [S, B, V/tp]
        if labels is None:  # inference / tests: full-vocab logits [B, S, V]
            full = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
            return full.transpose(0, 1)
        tgt = shifted_targets(labels, seg)
        valid = tgt != IGNORE_INDEX
        loss = tensor_parallel.vocab_parallel_cross_entropy(
            logits.float(), tgt.clamp(min=0).transpose(0, 1).contiguous())
        return loss.transpose(0, 1) * valid  # [B, S] per-token CE, 0 where not trained


def build_model(mc: LlavaOV15Config, config: TransformerConfig, te: bool) -> LlavaMegatron:
    return LlavaMegatron(config, mc, te=te, pre_process=ps.is_pipeline_first_stage(),
                         post_process=ps.is_pipeline_last_stage())


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
