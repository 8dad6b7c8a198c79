"""Tiny random-weight models of each family, built with transformers from a config, and
the same weights written as a GGUF file the way llama.cpp's converter lays them out."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
import transformers

from preheat.loader.gguf_loader import GGUFWeights, gguf_config, read_gguf
from preheat.loader.hf_loader import SafetensorsWeights, hf_config, hf_family, read_config

VOCAB = 260  # tiny.py's byte tokenizer
WINDOW = 16

QWEN3 = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
             rms_norm_eps=1e-6, rope_theta=1_000_000.0, tie_word_embeddings=False)
GEMMA3 = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=1, head_dim=32, max_position_embeddings=1024,
              rms_norm_eps=1e-6, sliding_window=WINDOW, query_pre_attn_scalar=32,
              layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
              rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                               "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
              tie_word_embeddings=True, pad_token_id=0, bos_token_id=2, eos_token_id=1)


def hf_model(family: str, seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    """A model with weights spread wide enough (and norms far enough from one) that greedy
    tokens and logits are far from ties."""
    if family == "qwen3":
        config = transformers.Qwen3Config(**{**QWEN3, **overrides})
        model = transformers.Qwen3ForCausalLM(config)
    else:
        config = transformers.Gemma3TextConfig(**{**GEMMA3, **overrides})
        model = transformers.Gemma3ForCausalLM(config)
    config._attn_implementation = "eager"
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # Gemma stores w of x * (1 + w); Qwen the multiplier itself
                base = 0.0 if family == "gemma3" else 1.0
                p.copy_(base + torch.randn(p.shape, generator=g) * 0.3)
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=g) * (0.2 if family == "gemma3" else 1.0))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return model.eval()


def save_folder(model: transformers.PreTrainedModel, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    return folder


def folder_weights(folder: Path):
    """(config, Weights) as the loader reads a folder, without its tokenizer."""
    config = hf_config(folder)
    family = hf_family(read_config(folder))
    return config, SafetensorsWeights(folder, family.weight_names(config), torch.float32)


def gguf_weights_of(path: Path):
    reader = read_gguf(path)
    config = gguf_config(reader)
    return config, GGUFWeights(reader, config)


_BLOCK = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
          "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "self_attn.q_norm": "attn_q_norm",
          "self_attn.k_norm": "attn_k_norm"}
_BLOCK_BY_FAMILY = {
    "qwen3": {"post_attention_layernorm": "ffn_norm"},
    "gemma3": {"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
               "post_feedforward_layernorm": "post_ffw_norm"},
}
_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}


def gguf_name(family: str, hf_name: str) -> str:
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    part, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{({**_BLOCK, **_BLOCK_BY_FAMILY[family]})[part]}.{kind}"


def write_gguf(path: Path, family: str, model: transformers.PreTrainedModel,
               types: dict[str, gguf.GGMLQuantizationType] | None = None) -> dict[str, np.ndarray]:
    """The model as llama.cpp's converter writes it: its tensor names, Gemma's norms stored
    as 1 + w, matrices in ``types`` (by GGUF part name, e.g. "attn_q"; F32 otherwise).
    Returns the values each quantized tensor holds (what the file's blocks dequantize to)."""
    cfg = model.config
    writer = gguf.GGUFWriter(path, family)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    if family == "gemma3":
        writer.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
        writer.add_sliding_window(cfg.sliding_window)
        writer.add_key_value("gemma3.attention.sliding_window_pattern", 2, gguf.GGUFValueType.UINT32)
    else:
        writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    stored: dict[str, np.ndarray] = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        values = tensor.float().numpy()
        if family == "gemma3" and name.endswith("norm.weight"):
            values = values + np.float32(1.0)
        target = gguf_name(family, name)
        qtype = (types or {}).get(target.split(".")[-2] if target.startswith("blk.") else target.split(".")[0])
        if qtype is None or values.ndim != 2:
            writer.add_tensor(target, values)
            continue
        data = gguf.quants.quantize(values, qtype)
        stored[name] = gguf.quants.dequantize(data, qtype).reshape(values.shape)
        writer.add_tensor(target, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored
