"""preheat's quantized matmul kernel against an exact model of its arithmetic."""
import pytest
import torch

from preheat.kernels.quant_matmul import GROUP, load_quant_kernel, pack, quant_matmul, quantize_groups
from quant_weights import dequantized, q4_1_like

pytestmark = pytest.mark.skipif(not load_quant_kernel(),
                                reason="the quantized matmul kernel needs AVX-512 VNNI or AVX2, and a C++ compiler")


def quantized_activations(x: torch.Tensor) -> torch.Tensor:
    """What the kernel multiplies: x rounded to int16 per group of 32 (scale = max |x| / 32767)."""
    groups = x.reshape(x.shape[0], -1, GROUP)
    amax = groups.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 1e-30, 32767 / amax, torch.zeros_like(amax))
    return ((groups * inv).round() * (amax / 32767)).reshape(x.shape).double()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("rows,out_dim,in_dim", [(1, 16, 32), (3, 64, 128), (8, 96, 160), (13, 256, 576)])
def test_kernel_computes_the_quantized_product(bits, rows, out_dim, in_dim):
    g = torch.Generator().manual_seed(rows * out_dim + bits)
    w, x = torch.randn(out_dim, in_dim, generator=g) * 0.05, torch.randn(rows, in_dim, generator=g)
    want = quantized_activations(x) @ dequantized(w, bits).T
    got = quant_matmul(x, pack(w, bits))
    # Integer dot products are exact; only float32 scaling and summing remain.
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5 * want.abs().max().item())
    # ...and the whole scheme stays close to the float product.
    assert (got - x @ w.T).abs().max() < (0.1 if bits == 4 else 0.02) * (x @ w.T).abs().max()


def test_q4_1_and_q8_0_weights_keep_their_values():
    g = torch.Generator().manual_seed(0)
    d = (torch.rand(32, 4, 1, generator=g) * 0.01 + 0.001).half().float()
    q8 = torch.randint(-127, 128, (32, 4, GROUP), generator=g)
    q8[..., 0] = 127
    for bits, w in ((4, q4_1_like(32, 128)), (8, (q8 * d).reshape(32, 128))):
        torch.testing.assert_close(dequantized(w, bits), w.double(), rtol=0, atol=1e-6)


def test_each_row_ignores_the_others():
    g = torch.Generator().manual_seed(1)
    packed = pack(torch.randn(48, 96, generator=g), 4)
    x = torch.randn(21, 96, generator=g) * torch.logspace(-2, 2, 21)[:, None]  # very different scales
    batched = quant_matmul(x, packed)
    for i in range(21):
        assert torch.equal(quant_matmul(x[i:i + 1], packed)[0], batched[i])


def test_zero_rows_and_empty_batches():
    packed = pack(torch.randn(16, 64), 8)
    assert torch.equal(quant_matmul(torch.zeros(2, 64), packed), torch.zeros(2, 16))
    assert quant_matmul(torch.zeros(0, 64), packed).shape == (0, 16)


def test_rejects_bad_shapes_and_types():
    with pytest.raises(ValueError, match="multiple of 16"):
        pack(torch.randn(24, 64), 4)
    with pytest.raises(ValueError, match="4 or 8"):
        quantize_groups(torch.randn(16, 64), 2)
    packed = pack(torch.randn(16, 64), 4)
    with pytest.raises(RuntimeError, match="inputs"):
        quant_matmul(torch.randn(2, 96), packed)
    with pytest.raises(RuntimeError, match="floating-point"):
        quant_matmul(torch.ones(2, 64, dtype=torch.long), packed)


def test_any_leading_shape_and_float_dtype():
    packed = pack(torch.randn(32, 64), 4)
    x = torch.randn(2, 3, 64)
    flat = quant_matmul(x.reshape(6, 64), packed)
    assert torch.equal(quant_matmul(x, packed), flat.reshape(2, 3, 32))
    half = quant_matmul(x.bfloat16(), packed)
    assert half.dtype == torch.bfloat16 and half.shape == (2, 3, 32)
    strided = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, not contiguous
    assert torch.equal(quant_matmul(strided, packed), quant_matmul(x, packed))
