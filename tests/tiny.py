"""A tiny random-weight model (a Llama unless the config names another family) and a byte
tokenizer, built in-process for fast unit tests."""
from __future__ import annotations

import llguidance
import torch

from preheat.config import EngineConfig
from preheat.engine.llm_engine import LLMEngine
from preheat.models import registry
from preheat.models.config import ModelConfig

EOS = 256


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(vocab_size=260, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=1024,
                  rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
    fields.update(overrides)
    return ModelConfig(**fields)


def tiny_weights(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """HF-named random weights; scaled so logits are peaked enough for stable argmax."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.15) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    h, kv = cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim
    w = {"model.embed_tokens.weight": rnd(cfg.vocab_size, h, scale=1.0),
         "model.norm.weight": 1 + rnd(h, scale=0.1)}
    if not cfg.tie_word_embeddings:
        w["lm_head.weight"] = rnd(cfg.vocab_size, h, scale=0.5)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}"
        w[f"{p}.input_layernorm.weight"] = 1 + rnd(h, scale=0.1)
        w[f"{p}.post_attention_layernorm.weight"] = 1 + rnd(h, scale=0.1)
        w[f"{p}.self_attn.q_proj.weight"] = rnd(cfg.num_heads * cfg.head_dim, h)
        w[f"{p}.self_attn.k_proj.weight"] = rnd(kv, h)
        w[f"{p}.self_attn.v_proj.weight"] = rnd(kv, h)
        w[f"{p}.self_attn.o_proj.weight"] = rnd(h, cfg.num_heads * cfg.head_dim)
        if cfg.attention_bias:
            for name, n in (("q", cfg.num_heads * cfg.head_dim), ("k", kv), ("v", kv)):
                w[f"{p}.self_attn.{name}_proj.bias"] = rnd(n)
        w[f"{p}.mlp.gate_proj.weight"] = rnd(cfg.intermediate_size, h)
        w[f"{p}.mlp.up_proj.weight"] = rnd(cfg.intermediate_size, h)
        w[f"{p}.mlp.down_proj.weight"] = rnd(h, cfg.intermediate_size)
    return w


class ByteTokenizer:
    """Token i < 256 is byte i; 256 is EOS. Decoding a split UTF-8 char gives U+FFFD."""

    eos_token_ids = frozenset({EOS})

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def byte_grammar_tokenizer(vocab_size: int = 260) -> llguidance.LLTokenizer:
    """llguidance's view of ByteTokenizer: ids past 255 are special (256 is EOS)."""

    class Tokens:
        eos_token_id = EOS
        bos_token_id = None
        tokens = [bytes([i]) for i in range(256)] + [b"<eos>"] + [
            f"<unused{i}>".encode() for i in range(257, vocab_size)]
        special_token_ids = list(range(256, vocab_size))

        def __call__(self, text: bytes) -> list[int]:
            return list(text)

    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(Tokens()))


def tiny_engine(clock=None, cfg: ModelConfig | None = None, weights: dict[str, torch.Tensor] | None = None,
                model_digest: str | None = None, arrivals=None, **config) -> LLMEngine:
    """``model_digest`` turns on the disk tier (``kv_disk_dir`` in ``config`` says where);
    ``arrivals`` (an InteractiveArrivals) lets interactive requests stop steps of batch work."""
    cfg = cfg or tiny_config()
    family = registry.load(registry.by_name(cfg.family))
    model = family.build(cfg, weights or tiny_weights(cfg), torch.device("cpu"), torch.float32,
                         config.get("weight_format", "dense"))
    econf = EngineConfig(**{"block_size": 4, "kv_cache_tokens": 4096, "max_step_tokens": 64, **config})
    kwargs = {"clock": clock} if clock else {}
    return LLMEngine(model, ByteTokenizer(), econf, model_digest=model_digest,
                     grammar_tokenizer=lambda: byte_grammar_tokenizer(cfg.vocab_size),
                     arrivals=arrivals, **kwargs)
