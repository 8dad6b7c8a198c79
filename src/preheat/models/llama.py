"""The Llama family (Llama 2/3, SmolLM2, Mistral, Qwen2) in plain PyTorch.

The model knows nothing of scheduling: it maps a flat batch of tokens plus
attention metadata to hidden states, reading and writing the paged KV cache.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from preheat.kernels import paged_attention as attention_kernel
from preheat.kernels.decode_stack import load_decode_stack_kernel
from preheat.layers.attention import AttentionMetadata, paged_attention
from preheat.layers.linear import QuantLinear, make_head, make_linear
from preheat.layers.rotary import RotaryEmbedding, apply_rotary
from preheat.models.config import ModelConfig
from preheat.models.stop_signal import StepInterrupted, StopSignal

_NO_STOP = torch.empty(0, dtype=torch.int64)  # the fused stack's "no stop signal"


class LlamaLayer:
    """One decoder block; q/k/v and gate/up are fused into single matmuls."""

    def __init__(self, cfg: ModelConfig, w: dict[str, torch.Tensor], prefix: str, int4: bool):
        attn, mlp = f"{prefix}.self_attn", f"{prefix}.mlp"
        self.cfg = cfg
        self.attn_norm = w[f"{prefix}.input_layernorm.weight"]
        self.mlp_norm = w[f"{prefix}.post_attention_layernorm.weight"]
        qkv_bias = (torch.cat([w[f"{attn}.{p}_proj.bias"] for p in "qkv"])
                    if cfg.attention_bias else None)
        self.qkv = make_linear(torch.cat([w[f"{attn}.{p}_proj.weight"] for p in "qkv"]), qkv_bias, int4)
        self.o = make_linear(w[f"{attn}.o_proj.weight"], None, int4)
        gate_up = torch.cat([w[f"{mlp}.gate_proj.weight"], w[f"{mlp}.up_proj.weight"]])
        self.gate_up = make_linear(gate_up, None, int4)
        self.down = make_linear(w[f"{mlp}.down_proj.weight"], None, int4)

    def __call__(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                 kv_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        cfg = self.cfg
        heads, kv_heads, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        h = F.rms_norm(x, (cfg.hidden_size,), self.attn_norm, cfg.rms_norm_eps)
        qkv = self.qkv(h).view(-1, heads + 2 * kv_heads, hd)
        # q and k heads are adjacent: one rotation covers both.
        qk = apply_rotary(qkv[:, : heads + kv_heads], *rope)
        q, k = qk[:, :heads], qk[:, heads:]
        v = qkv[:, heads + kv_heads:]
        attn = paged_attention(q, k, v, kv_cache, meta)
        x = x + self.o(attn.view(-1, heads * hd))
        h = F.rms_norm(x, (cfg.hidden_size,), self.mlp_norm, cfg.rms_norm_eps)
        gate, up = self.gate_up(h).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class LlamaModel:
    """Weights in Hugging Face naming; ``forward`` returns final hidden states.

    ``weight_format`` is "dense" (the model dtype throughout: matches the
    reference) or "int4" (decoder-layer matmuls with 4-bit weights, the LM head
    in 8 bits or bf16; CPU only; see ``layers/linear.py``).
    """

    def __init__(self, cfg: ModelConfig, weights: dict[str, torch.Tensor],
                 device: torch.device, dtype: torch.dtype, weight_format: str = "dense"):
        if weight_format not in ("dense", "int4"):
            raise ValueError(f"weight format must be 'dense' or 'int4', not {weight_format!r}")
        int4 = weight_format == "int4"
        if int4 and device.type != "cpu":
            raise ValueError("the int4 weight format runs on CPU kernels only: use it with device cpu")
        w = {name: t.to(device=device, dtype=dtype) for name, t in weights.items()}
        self.cfg = cfg
        self.device = device
        self.dtype = dtype
        self.weight_format = weight_format
        self.embed = w["model.embed_tokens.weight"]
        self.layers = [LlamaLayer(cfg, w, f"model.layers.{i}", int4) for i in range(cfg.num_layers)]
        self.norm = w["model.norm.weight"]
        head = self.embed if cfg.tie_word_embeddings else w["lm_head.weight"]
        self.lm_head = make_head(head, int4)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta,
                                    cfg.rope_scaling, device, dtype)
        self.decode_stack = fused_decode_stack(cfg, self.layers)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_cache: torch.Tensor, meta: AttentionMetadata,
                stop: StopSignal | None = None) -> torch.Tensor:
        """input_ids, positions: [tokens]; kv_cache: [layers, 2, blocks, block_size, kv_heads, head_dim].

        With ``stop``, the pass checks it before each layer and raises StepInterrupted once it fired."""
        x = F.embedding(input_ids, self.embed)
        rope = self.rope.tables(positions)
        if self._fused(kv_cache, meta):
            d = meta.decode
            cell, value = (stop.cell, stop.value) if stop is not None else (_NO_STOP, 0)
            x = self.decode_stack.forward(x, *rope, kv_cache, meta.slot_mapping, d.block_tables,
                                          d.context_lens, self.cfg.head_dim ** -0.5, cell, value)
            if x is None:
                raise StepInterrupted
        else:
            for i, layer in enumerate(self.layers):
                if stop is not None and stop.fired():
                    raise StepInterrupted
                x = layer(x, rope, kv_cache[i], meta)
        return F.rms_norm(x, (self.cfg.hidden_size,), self.norm, self.cfg.rms_norm_eps)

    def _fused(self, kv_cache: torch.Tensor, meta: AttentionMetadata) -> bool:
        """Whether this step runs on the C++ decode stack: pure decode, kernel-ready cache."""
        return (self.decode_stack is not None and meta.decode is not None and not meta.prefills
                and attention_kernel.supports(kv_cache[0]))

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Project only the positions that get sampled: the LM head is the costliest matmul."""
        return self.lm_head(hidden).float()


def fused_decode_stack(cfg: ModelConfig, layers: list[LlamaLayer]):
    """``LlamaLayer.__call__`` for every layer in one C++ call, for pure decode steps
    (``kernels/decode_stack.cpp``); None unless every linear runs on the VNNI kernel."""
    linears = [(layer.qkv, layer.o, layer.gate_up, layer.down) for layer in layers]
    if not all(isinstance(lin, QuantLinear) for group in linears for lin in group):
        return None
    if not load_decode_stack_kernel():
        return None
    tensors: list[torch.Tensor] = []
    sizes: list[int] = []
    for layer, group in zip(layers, linears, strict=True):
        tensors += [layer.attn_norm, layer.mlp_norm]
        for lin in group:
            bias = lin.bias if lin.bias is not None else torch.empty(0)
            tensors += [lin.weight.codes, lin.weight.scale, lin.weight.min, bias]
            sizes.append(lin.out_features)
    return torch.classes.preheat.DecodeStack(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                             cfg.rms_norm_eps, tensors, sizes)
