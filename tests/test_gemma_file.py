"""The real Gemma 3 270M Q4_K_M file (Q5_0, Q4_K, Q8_0, Q6_K and F32 tensors): its logits
against transformers' own reading of the same file, its quantized weights kept as they
are, its tokenizer and turn format."""
from __future__ import annotations

import pytest
import torch

import preheat.loader.gguf_loader as gguf_loader
from engine_driver import last_logits, run_one
from gemma_file import gemma_file
from preheat.config import EngineConfig
from preheat.engine.llm_engine import build_engine
from preheat.engine.request import SamplingParams
from preheat.kernels.quant_matmul import load_quant_kernel
from preheat.layers.linear import QuantLinear
from preheat.loader.model_loader import load_model

pytestmark = pytest.mark.slow
PROMPTS = ["The capital of France is Paris. The capital of Germany is",
           "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
           "Once upon a time, in a small village by the sea,"]
GREEDY_24 = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def loaded():
    return load_model(gemma_file())


@pytest.fixture(scope="module")
def reference():
    """transformers reads the GGUF itself (its own dequantization and name mapping), in float32."""
    import transformers

    path = gemma_file()
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def engine(loaded, weight_format: str):
    return build_engine(EngineConfig(kv_disk_bytes=0, kv_cache_tokens=4096, weight_format=weight_format,
                                     max_step_tokens=256), loaded=loaded)[0]


def test_config_and_tokenizer(loaded):
    cfg = loaded.config
    assert (cfg.family, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (
        "gemma3", 18, 640, 4, 1, 256)
    assert cfg.sliding_window == 512 and cfg.global_layers.count(True) == 3
    ids, _ = loaded.tokenizer.encode_prompt("Hello world")
    assert ids[0] == loaded.tokenizer.bos_token_id == 2


def test_the_family_turn_format_serves_a_file_without_a_template(loaded):
    tok = loaded.tokenizer
    text = tok.render_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert tok.backend.token_to_id("<end_of_turn>") in tok.eos_token_ids


def test_dense_logits_match_transformers_reading_of_the_file(loaded, reference):
    """float32 on both sides from the same dequantized values: 1e-4."""
    dense = engine(loaded, "dense")
    for text in PROMPTS:
        ids = loaded.tokenizer.encode_prompt(text)[0]
        with torch.no_grad():
            want = reference(torch.tensor([ids])).logits[0, -1]
        torch.testing.assert_close(last_logits(dense, ids), want, atol=1e-4, rtol=1e-4)


def test_the_default_path_gives_transformers_greedy_tokens(loaded, reference):
    if not load_quant_kernel():
        pytest.skip("needs preheat's quantized matmul kernel")
    native = engine(loaded, "auto")
    assert native.model.weight_format == "native"
    for text in PROMPTS:
        ids = loaded.tokenizer.encode_prompt(text)[0]
        with torch.no_grad():
            want = reference.generate(torch.tensor([ids]), max_new_tokens=24, min_new_tokens=24,
                                      do_sample=False)[0, len(ids):].tolist()
        assert run_one(native, ids, GREEDY_24).output_ids == want, text


def test_building_the_default_model_expands_no_quantized_tensor(loaded, monkeypatch):
    """Count it: the only tensors dequantized to floats while the model is built are the file's
    F32 norms; every matrix goes from the map to the kernel's layout as blocks (q, k and v, of
    Q5_0 and Q8_0, joined into one matrix of 8-bit codes)."""
    if not load_quant_kernel():
        pytest.skip("needs preheat's quantized matmul kernel")
    expanded = []
    real = gguf_loader.dequantize_tensor

    def counting(tensor):
        expanded.append((tensor.name, tensor.tensor_type.name))
        return real(tensor)

    monkeypatch.setattr(gguf_loader, "dequantize_tensor", counting)
    model = loaded.build(torch.device("cpu"), torch.float32, "auto")
    assert expanded and {kind for _, kind in expanded} == {"F32"}
    assert all(isinstance(lin, QuantLinear) for block in model.layers
               for lin in (block.attn.qkv, block.attn.o, block.mlp.gate_up, block.mlp.down))
