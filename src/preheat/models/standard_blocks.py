"""Attention and MLP built from Hugging Face-named weights, as most families name them."""
from __future__ import annotations

from preheat.layers.attention import AttentionVariant
from preheat.layers.mlp import GatedMLP
from preheat.layers.self_attention import SelfAttention
from preheat.models.config import ModelConfig
from preheat.models.weights import WeightBuilder


def self_attention(wb: WeightBuilder, cfg: ModelConfig, i: int, *, variant: AttentionVariant | None = None,
                   rope: int = 0, qk_norm_offset: float | None = None) -> SelfAttention:
    """Layer ``i``'s attention: q/k/v fused in one matmul (with Qwen2's biases when the
    config has them); per-head q/k RMSNorms when ``qk_norm_offset`` is given."""
    p = f"model.layers.{i}.self_attn"
    biases = [f"{p}.{x}_proj.bias" for x in "qkv"] if cfg.attention_bias else None
    norms = {}
    if qk_norm_offset is not None:
        norms = {f"{x}_norm": wb.norm(f"{p}.{x}_norm.weight", cfg.rms_norm_eps, qk_norm_offset) for x in "qk"}
    return SelfAttention(
        wb.linear([f"{p}.{x}_proj.weight" for x in "qkv"], biases), wb.linear([f"{p}.o_proj.weight"]),
        heads=cfg.num_heads, kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        variant=variant or AttentionVariant(cfg.head_dim ** -0.5), rope=rope, **norms)


def gated_mlp(wb: WeightBuilder, i: int, activation: str = "silu") -> GatedMLP:
    p = f"model.layers.{i}.mlp"
    return GatedMLP(wb.linear([f"{p}.gate_proj.weight", f"{p}.up_proj.weight"]),
                    wb.linear([f"{p}.down_proj.weight"]), activation)
