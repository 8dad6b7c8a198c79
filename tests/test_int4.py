"""The int4 weight format on both kernels: faithful to Q4_1-style weights, batch/cache invariant."""
import pytest
import torch

import preheat.layers.linear as linear
from engine_driver import last_logits, run, run_one
from preheat.engine.request import GenerationRequest, SamplingParams
from preheat.kernels.quant_matmul import GROUP, load_quant_kernel
from preheat.layers.linear import Int4Linear, Linear, QuantLinear, quantize_int4
from quant_weights import dequantized, q4_1_like
from tiny import tiny_config, tiny_engine, tiny_weights


@pytest.fixture(params=["preheat", "pytorch"])
def backend(request, monkeypatch):
    """Runs a test on preheat's quantized matmul kernel and on PyTorch's int4 kernel."""
    if request.param == "preheat" and not load_quant_kernel():
        pytest.skip("the quantized matmul kernel needs AVX-512 VNNI or AVX2, and a C++ compiler")
    if request.param == "pytorch":
        monkeypatch.setattr(linear, "load_quant_kernel", lambda: False)
    return request.param


def test_make_linear_picks_the_backend(backend):
    layer = linear.make_linear(q4_1_like(32, 64), None, int4=True)
    assert isinstance(layer, QuantLinear if backend == "preheat" else Int4Linear)
    assert isinstance(linear.make_linear(q4_1_like(32, 64), None, int4=False), Linear)


def test_q4_1_weights_keep_their_codes():
    w = q4_1_like(64, 128)
    packed, scale_zero = quantize_int4(w)
    # Reconstruct through the kernel on one-hot inputs: column j of W is W @ e_j.
    eye = torch.eye(128, dtype=torch.bfloat16)
    got = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, packed, GROUP, scale_zero).float().T
    # Only bf16 rounding (scale, zero, output) separates the two; a wrong code or layout
    # would scramble values by as much as the weights themselves.
    assert torch.allclose(got, w, atol=0.01 * w.abs().max())


def test_any_number_of_outputs(backend):
    w, b = q4_1_like(100, 64, seed=2), torch.randn(100)  # not a multiple of the kernel's 16 rows
    layer = linear.make_linear(w, b, int4=True)
    x = torch.randn(3, 64)
    y = layer(x)
    assert y.shape == (3, 100)
    assert torch.allclose(y, Linear(w, b)(x), rtol=0, atol=0.02 * y.abs().max())


def test_int4_linear_close_to_dense(backend):
    w, b = q4_1_like(96, 160, seed=1), torch.randn(96)
    x = torch.randn(5, 160)
    dense, int4 = Linear(w, b)(x), linear.make_linear(w, b, int4=True)(x)
    assert torch.allclose(int4, dense, rtol=0, atol=0.02 * dense.abs().max())


def test_rejects_input_size_not_a_multiple_of_the_group(backend):
    with pytest.raises(ValueError, match="multiple of 32"):
        linear.make_linear(torch.randn(16, 48), None, int4=True)


def ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_int4_engine_is_batch_and_cache_invariant(backend):
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    prompts = [ids(40, 7)[:30] + ids(10 + i, i) for i in range(6)]
    sequential = [run_one(tiny_engine(weight_format="int4"), p, params).output_ids for p in prompts]
    engine = tiny_engine(weight_format="int4")
    batched = run(engine, [GenerationRequest(p, params) for p in prompts])
    assert [b.output_ids for b in batched] == sequential
    cold = last_logits(tiny_engine(weight_format="int4"), prompts[0])
    assert len(engine.radix.match("", prompts[0])) > 0  # the shared 30 tokens are cached
    torch.testing.assert_close(last_logits(engine, prompts[0]), cold, atol=1e-5, rtol=1e-5)


def q4_1_model() -> dict[str, torch.Tensor]:
    """The tiny model with its decoder matmuls snapped to Q4_1 form, as a Q4_1 GGUF's are."""
    weights = tiny_weights(tiny_config())
    for name, w in weights.items():
        if name.startswith("model.layers.") and w.dim() == 2:
            weights[name] = dequantized(w, bits=4).float()
    return weights


def test_int4_follows_the_dense_model(backend):
    weights = q4_1_model()
    dense, int4 = tiny_engine(weights=weights), tiny_engine(weights=weights, weight_format="int4")
    assert isinstance(int4.model.layers[0].attn.qkv, QuantLinear if backend == "preheat" else Int4Linear)
    for seed in range(3):
        a, b = last_logits(dense, ids(50, seed)), last_logits(int4, ids(50, seed))
        # Only the activations' rounding (int8 or bf16) separates the two.
        assert a.argmax() == b.argmax()
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.999


def test_auto_keeps_float_weights_dense_and_int4_is_asked_for():
    cfg = tiny_config()
    assert tiny_engine(cfg=cfg, weight_format="auto").model.weight_format == "dense"
    assert tiny_engine(cfg=cfg, weight_format="int4").model.weight_format == "int4"


def test_unknown_weight_format_is_refused():
    with pytest.raises(ValueError, match="auto, dense, int4"):
        tiny_engine(weight_format="int3")
