"""The Llama family: Llama 2/3 (llama3 RoPE scaling included), SmolLM2, Mistral and Qwen2
(which adds biases on the q/k/v projections).

Pure decode steps run on a fused C++ decoder stack when every matmul is on preheat's
quantized kernel (``kernels/decode_stack.cpp``); every other step runs the blocks from Python.
"""
from __future__ import annotations

import torch

from preheat.kernels import paged_attention as attention_kernel
from preheat.kernels.decode_stack import load_decode_stack_kernel
from preheat.layers.attention import StepKV
from preheat.layers.decoder_block import PreNormBlock
from preheat.layers.linear import QuantLinear
from preheat.layers.rotary import RopeTables, RotaryEmbedding
from preheat.loader.errors import UnsupportedModelError
from preheat.models import tensor_names
from preheat.models.config import ModelConfig
from preheat.models.config_keys import ROPE_FREQS, gguf_core, hf_core
from preheat.models.decoder import DecoderModel, DecoderParts
from preheat.models.family import Metadata
from preheat.models.standard_blocks import gated_mlp, self_attention
from preheat.models.stop_signal import StepInterrupted, StopSignal
from preheat.models.weights import WeightBuilder, Weights

_NO_STOP = torch.empty(0, dtype=torch.int64)  # the fused stack's "no stop signal"
# llama.cpp's converter interleaves the q/k rows of these so its RoPE can rotate adjacent pairs;
# qwen2 is converted unpermuted because llama.cpp runs it with rotate-half ("NEOX") RoPE.
_PERMUTED_ARCHITECTURES = frozenset({"llama", "mistral"})


class LlamaModel(DecoderModel):
    """A Llama-family network from HF-named weights (a dict or a ``Weights`` source);
    ``weight_format`` as ``models/weights.py`` defines it."""

    def __init__(self, cfg: ModelConfig, weights: Weights | dict[str, torch.Tensor], device: torch.device,
                 dtype: torch.dtype, weight_format: str = "dense"):
        wb = WeightBuilder(weights, weight_format, device, dtype)
        blocks = [PreNormBlock(wb.norm(f"model.layers.{i}.input_layernorm.weight", cfg.rms_norm_eps),
                               self_attention(wb, cfg, i),
                               wb.norm(f"model.layers.{i}.post_attention_layernorm.weight", cfg.rms_norm_eps),
                               gated_mlp(wb, i))
                  for i in range(cfg.num_layers)]
        embed = wb.embedding("model.embed_tokens.weight")
        parts = DecoderParts(
            embed=embed, blocks=blocks, norm=wb.norm("model.norm.weight", cfg.rms_norm_eps),
            head=wb.head(None if cfg.tie_word_embeddings else "lm_head.weight", embed),
            ropes=[RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta,
                                   cfg.rope_scaling, device, dtype)])
        super().__init__(cfg, parts, device, dtype, wb.built_format)
        self.decode_stack = fused_decode_stack(cfg, blocks)

    def run_blocks(self, x: torch.Tensor, ropes: list[RopeTables], kv: StepKV,
                   stop: StopSignal | None) -> torch.Tensor:
        if not self._fused(kv):
            return super().run_blocks(x, ropes, kv, stop)
        d = kv.meta.decode
        cell, value = (stop.cell, stop.value) if stop is not None else (_NO_STOP, 0)
        x = self.decode_stack.forward(x, *ropes[0], kv.caches, kv.meta.slot_mapping, d.block_tables,
                                      d.context_lens, self.cfg.head_dim ** -0.5, cell, value)
        if x is None:
            raise StepInterrupted
        return x

    def _fused(self, kv: StepKV) -> bool:
        """Whether this step runs on the C++ decode stack: pure decode, kernel-ready cache."""
        meta = kv.meta
        return (self.decode_stack is not None and kv.uniform and meta.decode is not None
                and not meta.prefills and attention_kernel.supports(kv.caches[0]))


def fused_decode_stack(cfg: ModelConfig, blocks: list[PreNormBlock]):
    """``PreNormBlock.__call__`` for every layer in one C++ call, for pure decode steps
    (``kernels/decode_stack.cpp``); None unless every linear runs on the quantized kernel."""
    linears = [(b.attn.qkv, b.attn.o, b.mlp.gate_up, b.mlp.down) for b in blocks]
    if not all(type(lin) is QuantLinear for group in linears for lin in group):
        return None
    if not load_decode_stack_kernel():
        return None
    tensors: list[torch.Tensor] = []
    sizes: list[int] = []
    for block, group in zip(blocks, linears, strict=True):
        tensors += [block.attn_norm.weight, block.mlp_norm.weight]
        for lin in group:
            bias = lin.bias if lin.bias is not None else torch.empty(0)
            tensors += [lin.weight.codes, lin.weight.scale, lin.weight.min, bias]
            sizes.append(lin.out_features)
    return torch.classes.preheat.DecodeStack(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                             cfg.rms_norm_eps, tensors, sizes)


class LlamaFamily:
    name = "llama"
    _BLOCK = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
              **tensor_names.ATTENTION_AND_MLP}

    def config_from_gguf(self, meta: Metadata) -> ModelConfig:
        core = gguf_core(meta, meta.architecture)
        return ModelConfig(**core, attention_bias="blk.0.attn_q.bias" in meta.tensor_names)

    def config_from_hf(self, raw: dict) -> ModelConfig:
        model_type = raw.get("model_type")
        # ModelConfig.attention_bias means q/k/v biases only (Qwen2's layout).
        if raw.get("mlp_bias") or (model_type != "qwen2" and raw.get("attention_bias")):
            raise UnsupportedModelError("biases on o_proj or the MLP are not supported")
        # Qwen2 always has q/k/v biases and its config does not say so.
        return ModelConfig(**hf_core(raw), attention_bias=model_type == "qwen2")

    def gguf_tensor_name(self, gguf_name: str) -> str | None:
        return None if gguf_name == ROPE_FREQS else tensor_names.hf_name(gguf_name, self._BLOCK)

    def permuted_heads(self, name: str, cfg: ModelConfig, architecture: str) -> int | None:
        if architecture not in _PERMUTED_ARCHITECTURES:
            return None
        return cfg.num_heads if ".q_proj." in name else cfg.num_kv_heads if ".k_proj." in name else None

    def weight_names(self, cfg: ModelConfig) -> list[str]:
        names = tensor_names.global_names(cfg.tie_word_embeddings)
        for i in range(cfg.num_layers):
            names += tensor_names.layer_names(i, ["input_layernorm", "post_attention_layernorm", *(
                v for v in tensor_names.ATTENTION_AND_MLP.values())])
            if cfg.attention_bias:
                names += [f"model.layers.{i}.self_attn.{p}_proj.bias" for p in "qkv"]
        return names

    def build(self, cfg: ModelConfig, weights: Weights, device: torch.device, dtype: torch.dtype,
              weight_format: str) -> DecoderModel:
        return LlamaModel(cfg, weights, device, dtype, weight_format)


FAMILY = LlamaFamily()
