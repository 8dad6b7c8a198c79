"""Qwen3 (dense): the Llama block with an RMSNorm on each query and key head before RoPE,
no q/k/v biases, and a head_dim of its own (128, whatever the hidden size)."""
from __future__ import annotations

import torch

from preheat.layers.decoder_block import PreNormBlock
from preheat.layers.rotary import RotaryEmbedding
from preheat.loader.errors import UnsupportedModelError
from preheat.models import tensor_names
from preheat.models.config import ModelConfig
from preheat.models.config_keys import gguf_core, hf_core
from preheat.models.decoder import DecoderModel, DecoderParts
from preheat.models.family import Metadata
from preheat.models.standard_blocks import gated_mlp, self_attention
from preheat.models.weights import WeightBuilder, Weights


class Qwen3Family:
    name = "qwen3"
    _BLOCK = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
              **tensor_names.ATTENTION_AND_MLP, **tensor_names.QK_NORMS}

    def config_from_gguf(self, meta: Metadata) -> ModelConfig:
        return ModelConfig(**gguf_core(meta, meta.architecture), family=self.name)

    def config_from_hf(self, raw: dict) -> ModelConfig:
        if raw.get("attention_bias") or raw.get("mlp_bias"):
            raise UnsupportedModelError("Qwen3 with attention or MLP biases is not supported")
        if raw.get("use_sliding_window") and raw.get("sliding_window"):
            raise UnsupportedModelError("Qwen3 with use_sliding_window is not supported")
        return ModelConfig(**hf_core(raw), family=self.name)

    def gguf_tensor_name(self, gguf_name: str) -> str | None:
        return tensor_names.hf_name(gguf_name, self._BLOCK)

    def permuted_heads(self, name: str, cfg: ModelConfig, architecture: str) -> int | None:
        return None  # llama.cpp runs Qwen3 with rotate-half RoPE: its rows are as in HF

    def weight_names(self, cfg: ModelConfig) -> list[str]:
        names = tensor_names.global_names(cfg.tie_word_embeddings)
        for i in range(cfg.num_layers):
            names += tensor_names.layer_names(i, ["input_layernorm", "post_attention_layernorm",
                                                  *tensor_names.ATTENTION_AND_MLP.values(),
                                                  *tensor_names.QK_NORMS.values()])
        return names

    def build(self, cfg: ModelConfig, weights: Weights, device: torch.device, dtype: torch.dtype,
              weight_format: str) -> DecoderModel:
        wb = WeightBuilder(weights, weight_format, device, dtype)
        eps = cfg.rms_norm_eps
        blocks = [PreNormBlock(wb.norm(f"model.layers.{i}.input_layernorm.weight", eps),
                               self_attention(wb, cfg, i, qk_norm_offset=0.0),
                               wb.norm(f"model.layers.{i}.post_attention_layernorm.weight", eps),
                               gated_mlp(wb, i))
                  for i in range(cfg.num_layers)]
        embed = wb.embedding("model.embed_tokens.weight")
        parts = DecoderParts(
            embed=embed, blocks=blocks, norm=wb.norm("model.norm.weight", eps),
            head=wb.head(None if cfg.tie_word_embeddings else "lm_head.weight", embed),
            ropes=[RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta,
                                   cfg.rope_scaling, device, dtype)])
        return DecoderModel(cfg, parts, device, dtype, wb.built_format)


FAMILY = Qwen3Family()
