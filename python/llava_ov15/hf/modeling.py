"""transformers `PreTrainedModel` + `GenerationMixin` around the project's own network.

No second implementation: `__init__` builds `LlavaOV15ForConditionalGeneration` and adopts its
three children (`visual`, `model`, `lm_head`) as its own, so the state dict has exactly the
published key names, and `forward` runs the project's forward on those very modules.

Generation uses transformers' `DynamicCache` as storage for the project's attention (a thin view
translates its [B, H, T, D] layout to ours); positions are counted over real tokens of the
left-padded attention mask, as `llava_ov15.model.generate` does, so greedy decoding gives the
same tokens as `python -m llava_ov15.infer`. `<|image_pad|>`/`<|video_pad|>` can never be
generated (no pixels could stand behind them), as in the project's generator.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationMixin, LogitsProcessor, LogitsProcessorList, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from llava_ov15.model.attention import make_decode_mask
from llava_ov15.model.llava import LlavaOV15ForConditionalGeneration
from llava_ov15.model.vision import VisionTower

from .configuration import LlavaOV15HFConfig


class _CacheView:
    """Our attention's cache interface (`update(layer, k, v)` on [B, T, H, D], `advance`) over a
    transformers `Cache`, which stores [B, H, T, D] and counts its own length."""

    def __init__(self, cache: Cache):
        self.cache = cache

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        k, v = self.cache.update(k.transpose(1, 2), v.transpose(1, 2), layer)
        return k.transpose(1, 2), v.transpose(1, 2)

    def advance(self, n: int) -> None:  # the transformers cache grows in `update`
        pass


class SuppressVisionPads(LogitsProcessor):
    """Generated vision placeholders cannot be fed back (no pixels behind them): -inf."""

    def __init__(self, token_ids: list[int]):
        self.token_ids = torch.tensor(token_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor):
        return scores.index_fill(-1, self.token_ids.to(scores.device), float("-inf"))


class LlavaOV15PreTrainedModel(PreTrainedModel):
    config_class = LlavaOV15HFConfig
    config: LlavaOV15HFConfig
    # Keys are `visual.*`, `model.*`, `lm_head.*` at the top level: there is no base-model
    # wrapper to strip or add.
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    # transformers' default toggles the `gradient_checkpointing` flag of our VisionTower and
    # Qwen3Model, which checkpoint their blocks themselves.
    supports_gradient_checkpointing = True
    _no_split_modules = ["VisionBlock", "Qwen3Layer"]
    _skip_keys_device_placement = ["past_key_values"]
    # The project's attention runs on SDPA (or flash-attn when installed) by itself.
    _supports_sdpa = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VisionTower):  # its two bare parameters
            init.normal_(module.class_embedding, std=self.config.vision_config.initializer_range)
            init.normal_(module.class_pos_emb, std=self.config.vision_config.initializer_range)


class LlavaOV15ForConditionalGenerationHF(LlavaOV15PreTrainedModel, GenerationMixin):
    """`AutoModelForCausalLM` / `AutoModelForImageTextToText` class of `llavaonevision1_5`."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LlavaOV15HFConfig):
        super().__init__(config)
        core = LlavaOV15ForConditionalGeneration(config.to_ours())
        self.visual, self.model, self.lm_head = core.visual, core.model, core.lm_head
        self._adopt(core)
        self.post_init()
        gc = self.generation_config
        if gc is not None and gc.eos_token_id is None:  # a directory without generation_config
            tok = core.config.tokens
            gc.eos_token_id, gc.pad_token_id = list(tok.eos), tok.endoftext

    @classmethod
    def from_core(cls, core: LlavaOV15ForConditionalGeneration):
        """Wrap an existing project model (weights shared, not copied)."""
        with torch.device("meta"):  # no throw-away random init of a second network
            hf = cls(LlavaOV15HFConfig.from_ours(core.config))
        hf.visual, hf.model, hf.lm_head = core.visual, core.model, core.lm_head
        hf._adopt(core)
        return hf.eval() if not core.training else hf

    def _adopt(self, core: LlavaOV15ForConditionalGeneration) -> None:
        """Make `core` run on this model's children, now and after any replacement.

        Both share one child dict, so a module swapped in later (resized embeddings, a PEFT
        wrapper around lm_head, ...) is what the project's forward uses too. `core` itself stays
        out of the module tree: no second copy of every key in the state dict.
        """
        core.__dict__["_modules"] = self._modules
        object.__setattr__(self, "core", core)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """HF calling convention on the project's forward.

        `attention_mask` [B, S] (1 = real token, left padding) covers the cached tokens plus
        `input_ids`; positions default to the count of real tokens before each token.
        """
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("LLaVA-OneVision-1.5 takes input_ids (+ pixel_values); "
                             "inputs_embeds is not supported")
        if any(kwargs.get(k) is not None for k in ("video_grid_thw", "pixel_values_videos")):
            raise ValueError("videos are not supported by this model implementation")
        use_cache = self.config.text_config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None and labels is None and not self.training:
            past_key_values = DynamicCache(config=self.config)
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        t = input_ids.shape[1]
        valid = None
        if attention_mask is not None:
            if attention_mask.ndim != 2:
                raise ValueError("attention_mask must be 2-D [batch, tokens] (1 = real token)")
            valid = attention_mask.bool()
        elif past_key_values is not None:
            valid = torch.ones(input_ids.shape[0], past + t, dtype=torch.bool,
                               device=input_ids.device)
        if position_ids is None and valid is not None:
            position_ids = (valid.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]
        if past_key_values is not None:
            if position_ids is None:
                position_ids = torch.arange(past, past + t, device=input_ids.device).expand_as(
                    input_ids)
            out = self.core(input_ids, pixel_values, image_grid_thw, position_ids=position_ids,
                            cache=_CacheView(past_key_values),
                            decode_mask=make_decode_mask(valid, t), logits_to_keep=logits_to_keep)
        else:  # full sequence: padded batch (mask) or plain/packed rows
            out = self.core(input_ids, pixel_values, image_grid_thw, position_ids=position_ids,
                            attention_mask=attention_mask, labels=labels,
                            logits_to_keep=logits_to_keep)
        return CausalLMOutputWithPast(loss=out.loss, logits=out.logits,
                                      past_key_values=past_key_values)

    def generate(self, *args, logits_processor: LogitsProcessorList | None = None, **kwargs):
        tok = self.core.config.tokens
        processors = LogitsProcessorList(logits_processor or [])
        processors.append(SuppressVisionPads([tok.image, tok.video]))
        return super().generate(*args, logits_processor=processors, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save, plus the remote-code files `auto_map` names when the model was
        loaded from a directory that has them, so the copy loads with `trust_remote_code` too."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        src = Path(self.config.name_or_path or "")
        auto_map = getattr(self.config, "auto_map", None) or {}
        if src.is_dir() and src.resolve() != Path(save_directory).resolve():
            for ref in auto_map.values():
                for r in ([ref] if isinstance(ref, str) else ref):
                    if r and "--" not in r:
                        f = src / (r.rsplit(".", 1)[0] + ".py")
                        if f.is_file():
                            shutil.copyfile(f, Path(save_directory) / f.name)
        return out
