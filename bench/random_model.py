"""A Hugging Face model folder with random weights in a named Llama shape, for benchmarks.

Timing depends on a model's shape, not on its weights, so a bench can measure how a
bigger model behaves without downloading one (these machines reach no model hub). The
folder gets the embedded model's tokenizer and chat template (or those of ``--tokenizer``,
a GGUF file or a model folder), and weights drawn from
N(0, 0.02) with unit norms: what it writes is noise, but every request runs as a real
model's would, and ``preheat serve --model FOLDER`` serves it.

``--context`` sets its window (a client's long prompt, such as Claude Code's ~20k tokens,
needs more than the embedded model's 8k). ``--eos-first`` makes a model that ends every
reply at once, for measuring prompts whose replies don't matter: its noise would otherwise
run on until ``max_tokens`` (Claude Code asks for 64000). One hidden dimension holds a
constant that no layer writes to, and the end-of-turn token's row of ``lm_head`` reads it.

    python bench/random_model.py OUT_DIR [--shape tiny|smollm2-135m|llama-1b|llama-8b]
                                 [--dtype bfloat16] [--context 8192] [--eos-first]
                                 [--tokenizer GGUF_OR_FOLDER] [--chat-template FILE]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from preheat.loader.embedded import embedded_model_path
from preheat.tokenizer.tokenizer import Tokenizer

# hidden, intermediate, layers, heads, KV heads, head_dim, tied embeddings
SHAPES = {
    "tiny": (128, 256, 2, 2, 1, 64, False),  # for tests: fast at any prompt length
    "smollm2-135m": (576, 1536, 30, 9, 3, 64, True),  # the embedded model's
    "llama-1b": (2048, 8192, 16, 32, 8, 64, True),  # Llama 3.2 1B's
    "llama-8b": (4096, 14336, 32, 32, 8, 128, False),  # Llama 3.1 8B's
}


def config_json(shape: str, vocab: int, tokenizer: Tokenizer, context: int = 8192,
                eos_first: bool = False) -> dict:
    hidden, inter, layers, heads, kv_heads, head_dim, tied = SHAPES[shape]
    tied = tied and not eos_first  # the end-of-turn row of lm_head is its own
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab,
            "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
            "max_position_embeddings": context, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
            "tie_word_embeddings": tied, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id}


def random_weights(cfg: dict, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden, inter, head_dim = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q_out, kv_out = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim

    def normal(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(dtype)

    w = {"model.embed_tokens.weight": normal(cfg["vocab_size"], hidden),
         "model.norm.weight": torch.ones(hidden, dtype=dtype)}
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = normal(cfg["vocab_size"], hidden)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        w |= {f"{p}.input_layernorm.weight": torch.ones(hidden, dtype=dtype),
              f"{p}.post_attention_layernorm.weight": torch.ones(hidden, dtype=dtype),
              f"{p}.self_attn.q_proj.weight": normal(q_out, hidden),
              f"{p}.self_attn.k_proj.weight": normal(kv_out, hidden),
              f"{p}.self_attn.v_proj.weight": normal(kv_out, hidden),
              f"{p}.self_attn.o_proj.weight": normal(hidden, q_out),
              f"{p}.mlp.gate_proj.weight": normal(inter, hidden),
              f"{p}.mlp.up_proj.weight": normal(inter, hidden),
              f"{p}.mlp.down_proj.weight": normal(hidden, inter)}
    return w


def end_every_reply_at_once(w: dict[str, torch.Tensor], eos: int) -> None:
    """Dimension 0 of the residual stream is 1 for every token and written by no layer, so
    after the final norm it is large everywhere; the end-of-turn token's logit reads it."""
    w["model.embed_tokens.weight"][:, 0] = 1.0
    for name, weight in w.items():
        if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            weight[0] = 0.0
    w["lm_head.weight"][eos, 0] = 10.0


def load_tokenizer(source: Path | None) -> Tokenizer:
    if source is None:
        return Tokenizer.from_gguf(embedded_model_path())
    return Tokenizer.from_hf_folder(source) if source.is_dir() else Tokenizer.from_gguf(source)


def write(out: Path, shape: str, dtype: torch.dtype, tokenizer: Tokenizer, seed: int = 0,
          context: int = 8192, eos_first: bool = False, chat_template: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.backend.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": tokenizer.eos_token, "bos_token": tokenizer.bos_token,
        "add_bos_token": tokenizer.add_bos,
        "chat_template": chat_template or tokenizer.chat_template}))
    cfg = config_json(shape, tokenizer.vocab_size, tokenizer, context, eos_first)
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    weights = random_weights(cfg, dtype, seed)
    if eos_first:
        end_every_reply_at_once(weights, tokenizer.eos_token_id)
    save_file(weights, str(out / "model.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--tokenizer", type=Path, help="a GGUF file or a model folder (default: the embedded model)")
    parser.add_argument("--context", type=int, default=8192, help="the context window")
    parser.add_argument("--eos-first", action="store_true", help="end every reply at once")
    parser.add_argument("--chat-template", type=Path,
                        help="a Jinja chat template file to use instead of the tokenizer's")
    args = parser.parse_args()
    template = args.chat_template.read_text() if args.chat_template else None
    write(args.out, args.shape, getattr(torch, args.dtype), load_tokenizer(args.tokenizer),
          context=args.context, eos_first=args.eos_first, chat_template=template)
    print(f"{args.out}: random {args.shape} ({args.dtype})")


if __name__ == "__main__":
    main()
