"""The Llama family (Llama 2/3, SmolLM2, Mistral, Qwen2) in plain PyTorch.

The model knows nothing of scheduling: it maps a flat batch of tokens plus
attention metadata to hidden states, reading and writing the paged KV cache.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from preheat.layers.attention import AttentionMetadata, paged_attention
from preheat.layers.rotary import RotaryEmbedding, apply_rotary
from preheat.models.config import ModelConfig


class LlamaLayer:
    """One decoder block; q/k/v and gate/up are fused into single matmuls."""

    def __init__(self, cfg: ModelConfig, w: dict[str, torch.Tensor], prefix: str):
        attn, mlp = f"{prefix}.self_attn", f"{prefix}.mlp"
        self.cfg = cfg
        self.attn_norm = w[f"{prefix}.input_layernorm.weight"]
        self.mlp_norm = w[f"{prefix}.post_attention_layernorm.weight"]
        self.qkv = torch.cat([w[f"{attn}.{p}_proj.weight"] for p in "qkv"])
        self.qkv_bias = (torch.cat([w[f"{attn}.{p}_proj.bias"] for p in "qkv"])
                         if cfg.attention_bias else None)
        self.o = w[f"{attn}.o_proj.weight"]
        self.gate_up = torch.cat([w[f"{mlp}.gate_proj.weight"], w[f"{mlp}.up_proj.weight"]])
        self.down = w[f"{mlp}.down_proj.weight"]

    def __call__(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                 kv_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        cfg = self.cfg
        heads, kv_heads, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        h = F.rms_norm(x, (cfg.hidden_size,), self.attn_norm, cfg.rms_norm_eps)
        qkv = F.linear(h, self.qkv, self.qkv_bias).view(-1, heads + 2 * kv_heads, hd)
        # q and k heads are adjacent: one rotation covers both.
        qk = apply_rotary(qkv[:, : heads + kv_heads], *rope)
        q, k = qk[:, :heads], qk[:, heads:]
        v = qkv[:, heads + kv_heads:]
        attn = paged_attention(q, k, v, kv_cache, meta)
        x = x + F.linear(attn.view(-1, heads * hd), self.o)
        h = F.rms_norm(x, (cfg.hidden_size,), self.mlp_norm, cfg.rms_norm_eps)
        gate, up = F.linear(h, self.gate_up).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, self.down)


class LlamaModel:
    """Weights in Hugging Face naming; ``forward`` returns final hidden states."""

    def __init__(self, cfg: ModelConfig, weights: dict[str, torch.Tensor],
                 device: torch.device, dtype: torch.dtype):
        w = {name: t.to(device=device, dtype=dtype) for name, t in weights.items()}
        self.cfg = cfg
        self.device = device
        self.dtype = dtype
        self.embed = w["model.embed_tokens.weight"]
        self.layers = [LlamaLayer(cfg, w, f"model.layers.{i}") for i in range(cfg.num_layers)]
        self.norm = w["model.norm.weight"]
        self.lm_head = self.embed if cfg.tie_word_embeddings else w["lm_head.weight"]
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta,
                                    cfg.rope_scaling, device, dtype)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions: [tokens]; kv_cache: [layers, 2, blocks, block_size, kv_heads, head_dim]."""
        x = F.embedding(input_ids, self.embed)
        rope = self.rope.tables(positions)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, kv_cache[i], meta)
        return F.rms_norm(x, (self.cfg.hidden_size,), self.norm, self.cfg.rms_norm_eps)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Project only the positions that get sampled: the LM head is the costliest matmul."""
        return F.linear(hidden, self.lm_head).float()
