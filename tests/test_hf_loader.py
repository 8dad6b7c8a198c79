"""Hugging Face folders: tiny random transformers models saved with save_pretrained, loaded back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokenizers
import torch
from tokenizers.processors import TemplateProcessing

from preheat.loader.errors import UnsupportedModelError
from preheat.loader.model_loader import load_model
from preheat.loader.embedded import embedded_model_path
from preheat.loader.hf_loader import hf_config
from preheat.models.config import ModelConfig
from preheat.tokenizer.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 256,
}
SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
)
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


@pytest.fixture(scope="module")
def gguf_tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(embedded_model_path())


def save_model(folder: Path, model, tokenizer: Tokenizer, *, shard: str | None = None) -> None:
    """save_pretrained plus the tokenizer files a real checkpoint ships."""
    model.save_pretrained(folder, max_shard_size=shard) if shard else model.save_pretrained(folder)
    tokenizer.backend.save(str(folder / "tokenizer.json"))
    settings = {
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>"},
        "chat_template": TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))


def test_llama_folder_round_trip(tmp_path, gguf_tokenizer):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=gguf_tokenizer.vocab_size,
        rope_theta=500000.0,
        rope_scaling=dict(LLAMA3_SCALING),
        tie_word_embeddings=False,
        **SHAPE,
    )
    model = transformers.LlamaForCausalLM(config)
    folder = tmp_path / "Tiny-Llama-3"
    folder.mkdir()
    save_model(folder, model, gguf_tokenizer, shard="200KB")
    assert (folder / "model.safetensors.index.json").exists()

    loaded = load_model(str(folder))
    assert loaded.config == ModelConfig(
        vocab_size=gguf_tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        attention_bias=False,
    )
    assert loaded.config.rope_scaling == LLAMA3_SCALING
    assert loaded.model_id == "Tiny-Llama-3" and loaded.source == folder.resolve()
    expected = model.state_dict()
    assert loaded.weights.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded.weights[name], tensor), name

    tokenizer = loaded.tokenizer
    assert tokenizer.encode("<|im_start|>hello 42") == gguf_tokenizer.encode("<|im_start|>hello 42")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)
    assert tokenizer.eos_token_ids == frozenset({0, 2})
    assert tokenizer.render_chat([{"role": "user", "content": "hi"}]) == "<|im_start|>user\nhi<|im_end|>\n"


def test_qwen2_tied_folder_has_biases_and_no_lm_head(tmp_path, gguf_tokenizer):
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=gguf_tokenizer.vocab_size, tie_word_embeddings=True, **SHAPE)
    model = transformers.Qwen2ForCausalLM(config)
    folder = tmp_path / "tiny-qwen"
    folder.mkdir()
    save_model(folder, model, gguf_tokenizer)

    loaded = load_model(folder, dtype=torch.bfloat16)
    assert loaded.config.attention_bias and loaded.config.tie_word_embeddings
    assert (
        loaded.config.rope_scaling is None
        and loaded.config.rope_theta == config.rope_parameters["rope_theta"]
    )
    assert "lm_head.weight" not in loaded.weights
    expected = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert loaded.weights.keys() == expected.keys()
    assert "model.layers.1.self_attn.v_proj.bias" in loaded.weights
    for name, tensor in expected.items():
        assert loaded.weights[name].dtype == torch.bfloat16
        assert torch.equal(loaded.weights[name], tensor.to(torch.bfloat16)), name


def test_tokenizer_special_tokens_from_folder_files(tmp_path, gguf_tokenizer):
    backend = tokenizers.Tokenizer.from_str(gguf_tokenizer.backend.to_str())  # a copy we may modify
    backend.post_processor = TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)]
    )
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 0}))

    # No tokenizer_config.json: ids come from config.json, add_bos from the post-processor.
    tokenizer = Tokenizer.from_hf_folder(tmp_path)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.add_bos) == (1, 0, True)
    assert tokenizer.encode_prompt("hi")[0] == [1, *gguf_tokenizer.encode("hi")]
    assert tokenizer.encode("hi") == gguf_tokenizer.encode("hi")

    # Qwen2 style: an explicit null bos_token means none, whatever config.json says.
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": None, "eos_token": "<|im_end|>"})
    )
    tokenizer = Tokenizer.from_hf_folder(tmp_path)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.add_bos) == (None, 2, False)
    assert tokenizer.render_chat([{"role": "user", "content": "hi"}]).startswith("<|im_start|>user\nhi")


def test_old_style_config_keys(tmp_path):
    raw = {
        "model_type": "mistral",
        "vocab_size": 10,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "max_position_embeddings": 32,
        "rope_theta": 1e6,
        "rope_scaling": {"type": "linear", "factor": 2.0},
    }
    (tmp_path / "config.json").write_text(json.dumps(raw))
    config = hf_config(tmp_path)
    assert (config.num_kv_heads, config.head_dim, config.rope_theta) == (4, 16, 1e6)
    assert config.rope_scaling == {"rope_type": "linear", "factor": 2.0}


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        load_model(tmp_path)
