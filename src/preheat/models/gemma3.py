"""Gemma 3 (text): sandwich-normed blocks, RMSNorm as x * (1 + w), q/k norms, a gated MLP
with tanh-approximated GELU, embeddings scaled by sqrt(hidden), and five sliding-window
(local) layers to each global one, the two kinds with RoPE bases of their own.

Weights: a Hugging Face checkpoint stores each norm as w; llama.cpp's converter stores
1 + w, so the offset the norms add depends on where the weights came from.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from preheat.layers.attention import AttentionVariant
from preheat.layers.decoder_block import SandwichBlock
from preheat.layers.rotary import RotaryEmbedding
from preheat.loader.errors import UnsupportedModelError
from preheat.models import tensor_names
from preheat.models.config import ModelConfig
from preheat.models.config_keys import float32, gguf_core, hf_core, hf_rope_scaling
from preheat.models.decoder import DecoderModel, DecoderParts
from preheat.models.family import Metadata
from preheat.models.standard_blocks import gated_mlp, self_attention
from preheat.models.weights import WeightBuilder, Weights

_LOCAL_THETA = 10_000.0  # every Gemma 3 size; llama.cpp's GGUF does not record it
_PATTERN = 6  # every sixth layer is global (layers 5, 11, ...)
_GLOBAL, _LOCAL = 0, 1  # indices of the two rotary tables


@dataclass(frozen=True)
class Gemma3Config(ModelConfig):
    sliding_window: int = 4096
    global_layers: tuple[bool, ...] = ()  # per layer: True for full attention
    rope_local_theta: float = _LOCAL_THETA
    query_pre_attn_scalar: float = 256.0
    final_logit_softcapping: float | None = None
    norm_offset: float = 1.0  # 1 for Hugging Face weights (w), 0 for llama.cpp's (1 + w)

    def layer_windows(self) -> tuple[int, ...]:
        return tuple(0 if is_global else self.sliding_window for is_global in self.global_layers)


def _pattern_layers(num_layers: int, pattern: int) -> tuple[bool, ...]:
    return tuple((i + 1) % pattern == 0 for i in range(num_layers))


class Gemma3Family:
    name = "gemma3"
    _BLOCK = {"attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
              "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
              **tensor_names.ATTENTION_AND_MLP, **tensor_names.QK_NORMS}

    def config_from_gguf(self, meta: Metadata) -> Gemma3Config:
        arch = meta.architecture
        core = gguf_core(meta, arch)
        heads, hidden = core["num_heads"], core["hidden_size"]
        pattern = int(meta.value(f"{arch}.attention.sliding_window_pattern", _PATTERN))
        # llama.cpp scales queries by 1/sqrt(head_dim), except for the 27B (hidden / heads).
        scalar = hidden // heads if core["num_layers"] == 62 else core["head_dim"]
        return Gemma3Config(**core, family=self.name,
                            sliding_window=int(meta.require(f"{arch}.attention.sliding_window")),
                            global_layers=_pattern_layers(core["num_layers"], pattern),
                            query_pre_attn_scalar=float(scalar),
                            final_logit_softcapping=_optional_float(meta.value(f"{arch}.final_logit_softcapping")),
                            norm_offset=0.0)

    def config_from_hf(self, raw: dict) -> Gemma3Config:
        if raw.get("attn_logit_softcapping") or raw.get("use_bidirectional_attention"):
            raise UnsupportedModelError("Gemma 3 with attention soft-capping or bidirectional attention "
                                        "is not supported")
        core = hf_core(raw)
        rope = raw.get("rope_parameters") or {}
        full, local = rope.get("full_attention"), rope.get("sliding_attention")
        if full is not None:  # transformers 5: one set of rotary parameters per layer type
            core["rope_theta"] = float(full.get("rope_theta", 1_000_000.0))
            core["rope_scaling"] = hf_rope_scaling(full)
            local_theta = float((local or {}).get("rope_theta", _LOCAL_THETA))
        else:
            core["rope_theta"] = float(raw.get("rope_theta", 1_000_000.0))
            local_theta = float(raw.get("rope_local_base_freq", _LOCAL_THETA))
        types = raw.get("layer_types")
        layers = (tuple(t == "full_attention" for t in types) if types else
                  _pattern_layers(core["num_layers"], int(raw.get("sliding_window_pattern", _PATTERN))))
        core["tie_word_embeddings"] = bool(raw.get("tie_word_embeddings", True))
        return Gemma3Config(**core, family=self.name, sliding_window=int(raw.get("sliding_window") or 4096),
                            global_layers=layers, rope_local_theta=local_theta,
                            query_pre_attn_scalar=float(raw.get("query_pre_attn_scalar", 256)),
                            final_logit_softcapping=_optional_float(raw.get("final_logit_softcapping")),
                            norm_offset=1.0)

    def gguf_tensor_name(self, gguf_name: str) -> str | None:
        return tensor_names.hf_name(gguf_name, self._BLOCK)

    def permuted_heads(self, name: str, cfg: ModelConfig, architecture: str) -> int | None:
        return None

    def weight_names(self, cfg: ModelConfig) -> list[str]:
        names = tensor_names.global_names(cfg.tie_word_embeddings)
        for i in range(cfg.num_layers):
            names += tensor_names.layer_names(i, [*self._BLOCK.values()])
        return names

    def build(self, cfg: Gemma3Config, weights: Weights, device: torch.device, dtype: torch.dtype,
              weight_format: str) -> DecoderModel:
        wb = WeightBuilder(weights, weight_format, device, dtype)
        eps, offset = cfg.rms_norm_eps, cfg.norm_offset
        scale = cfg.query_pre_attn_scalar ** -0.5

        def block(i: int) -> SandwichBlock:
            p = f"model.layers.{i}"
            is_global = cfg.global_layers[i]
            variant = AttentionVariant(scale, cfg.layer_windows()[i])
            norms = tuple(wb.norm(f"{p}.{n}.weight", eps, offset) for n in (
                "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                "post_feedforward_layernorm"))
            attn = self_attention(wb, cfg, i, variant=variant, rope=_GLOBAL if is_global else _LOCAL,
                                  qk_norm_offset=offset)
            return SandwichBlock(norms, attn, gated_mlp(wb, i, "gelu_pytorch_tanh"))

        blocks = [block(i) for i in range(cfg.num_layers)]
        embed = wb.embedding("model.embed_tokens.weight")
        ropes = [RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling,
                                 device, dtype),
                 RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_local_theta, None,
                                 device, dtype)]
        parts = DecoderParts(
            embed=embed, blocks=blocks, norm=wb.norm("model.norm.weight", eps, offset),
            head=wb.head(None if cfg.tie_word_embeddings else "lm_head.weight", embed), ropes=ropes,
            embed_scale=float32(cfg.hidden_size ** 0.5), logit_softcap=cfg.final_logit_softcapping)
        return DecoderModel(cfg, parts, device, dtype, wb.built_format)


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


FAMILY = Gemma3Family()
