"""GGUF blocks repacked for the quantized matmul kernel: every weight exactly as gguf dequantizes it."""
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

import preheat.kernels.gguf_repack as gguf_repack
from preheat.kernels.gguf_repack import bits_per_weight, repack, supported_types, unpack, unpack_rows
from preheat.kernels.quant_matmul import GROUP, PackedWeight, load_quant_kernel, quant_matmul
from test_quant_matmul import quantized_activations

needs_kernel = pytest.mark.skipif(not load_quant_kernel(),
                                  reason="the quantized matmul kernel needs AVX-512 VNNI or AVX2, and a C++ compiler")

# Byte offsets of each type's float16 fields in a block (random bytes there could be NaN/inf).
FP16_FIELDS = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
               T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208], T.IQ4_NL: [0], T.IQ4_XS: [0]}
QUANTIZABLE = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]  # gguf.quants.quantize supports these
ALL = supported_types()
# (type, where its blocks come from): random bytes for all, gguf's quantizer where it has one
SOURCES = [pytest.param(t, "random", id=f"{t.name}-random") for t in ALL] + \
          [pytest.param(t, "quantize", id=f"{t.name}-quantize") for t in QUANTIZABLE]
# Types whose default (compact) scales differ from the plain float16/float32 ones.
COMPACT = [T.Q4_0, T.Q5_0, T.Q8_0, T.IQ4_NL, T.Q4_K, T.Q5_K, T.Q6_K]


def random_blocks(ggml_type: T, rows: int, cols: int, seed: int) -> np.ndarray:
    """Random bytes [rows, row_bytes], every code pattern possible, with float16 scales of
    either sign over six decades (subnormals and zeros included) instead of NaN or inf."""
    rng = np.random.default_rng(seed)
    block, size = GGML_QUANT_SIZES[ggml_type]
    raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    for at in FP16_FIELDS[ggml_type]:
        d = 10 ** rng.uniform(-6, 0, raw.shape[:2]) * rng.choice([-1, 1], raw.shape[:2])
        d[rng.random(raw.shape[:2]) < 0.02] = 0
        raw[..., at:at + 2] = d.astype(np.float16).view(np.uint8).reshape(*raw.shape[:2], 2)
    return raw.reshape(rows, -1)


def quantized_blocks(ggml_type: T, rows: int, cols: int, seed: int) -> np.ndarray:
    """Normal weights (per-row scales over two decades) quantized by gguf itself."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)) * 10 ** rng.uniform(-3, -1, (rows, 1))
    return quantize(w.astype(np.float32), ggml_type)


def blocks(ggml_type: T, source: str, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    return (quantized_blocks if source == "quantize" else random_blocks)(ggml_type, rows, cols, seed)


def reference(raw: np.ndarray, ggml_type: T) -> torch.Tensor:
    return torch.from_numpy(dequantize(raw, ggml_type))


@pytest.mark.parametrize("n_blocks", [1, 3, 9])
@pytest.mark.parametrize("rows", [1, 37])
@pytest.mark.parametrize("ggml_type,source", SOURCES)
def test_every_weight_keeps_its_value(ggml_type, rows, n_blocks, source):
    cols = GGML_QUANT_SIZES[ggml_type][0] * n_blocks
    raw = blocks(ggml_type, source, rows, cols, seed=rows + n_blocks)
    for compact in (True, False):
        packed = repack(raw, ggml_type, cols, compact=compact)
        assert packed.codes.shape[0] == -(-rows // 16)  # rows padded to whole tiles
        assert torch.equal(unpack(packed, rows, cols), reference(raw, ggml_type))


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "plain"])
@pytest.mark.parametrize("ggml_type", [T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_0, T.Q4_1], ids=lambda t: t.name)
def test_unpack_rows_reads_only_the_rows_asked_for(ggml_type, compact):
    raw = random_blocks(ggml_type, 40, 512, seed=11)
    packed = repack(raw, ggml_type, 512, compact=compact)
    ids = torch.tensor([39, 0, 17, 17, 5])
    assert torch.equal(unpack_rows(packed, ids, 512), reference(raw, ggml_type)[ids])


@pytest.mark.parametrize("ggml_type", ALL, ids=lambda t: t.name)
def test_memory_per_weight(ggml_type):
    """Codes as wide as the file's (4 bits only where the file's are 4-bit and affine); scales
    as the file's own factors (compact), or float16 where float16 holds them exactly (plain)."""
    file_bits = GGML_QUANT_SIZES[ggml_type][1] * 8 / GGML_QUANT_SIZES[ggml_type][0]
    raw = random_blocks(ggml_type, 32, 512, seed=1)
    for compact in (True, False):
        packed = repack(raw, ggml_type, 512, compact=compact)
        tensors = (packed.codes, packed.scale) + ((packed.min,) if packed.min.dim() > 1 else ())
        nbytes = sum(t.numel() * t.element_size() for t in tensors)  # less an implied min's factor per tile
        assert nbytes * 8 / (32 * 512) == bits_per_weight(ggml_type, compact)
        assert bits_per_weight(ggml_type, compact) >= file_bits
    compact = {T.Q4_0: 4.5, T.Q4_1: 5, T.Q5_0: 8.5, T.Q5_1: 9, T.Q8_0: 8.5, T.IQ4_NL: 8.5,
               T.Q4_K: 4.625, T.Q5_K: 8.625, T.IQ4_XS: 10, T.Q6_K: 6.5625}
    plain = {T.Q4_0: 5, T.Q4_1: 5, T.Q5_0: 9, T.Q5_1: 9, T.Q8_0: 9, T.IQ4_NL: 9,
             T.Q4_K: 6, T.Q5_K: 10, T.IQ4_XS: 10, T.Q6_K: 10}
    assert bits_per_weight(ggml_type) == compact[ggml_type]
    assert bits_per_weight(ggml_type, compact=False) == plain[ggml_type]


@pytest.mark.parametrize("ggml_type", COMPACT, ids=lambda t: t.name)
def test_compact_formats(ggml_type):
    """The file's factors, in the shapes the kernel recognizes (quant_matmul.cpp's header)."""
    packed = repack(random_blocks(ggml_type, 40, 512, seed=14), ggml_type, 512)
    tiles, groups = 3, 16
    if ggml_type in (T.Q4_K, T.Q5_K):
        assert packed.scale.dtype == torch.uint8 and packed.scale.shape == (tiles, groups, 2, 16)
        assert packed.min.dtype == torch.float16 and packed.min.shape == (tiles, groups // 8, 2, 16)
    elif ggml_type == T.Q6_K:
        assert packed.scale.dtype == torch.int8 and packed.scale.shape == (tiles, groups, 2, 16)
        assert packed.min.dtype == torch.float16 and packed.min.shape == (tiles, groups // 8, 16)
    else:
        offset = {T.Q4_0: -8, T.Q5_0: -16, T.Q8_0: -128, T.IQ4_NL: -128}[ggml_type]
        assert packed.scale.dtype == torch.float16 and packed.scale.shape == (tiles, groups, 16)
        assert torch.equal(packed.min, torch.full((tiles,), float(offset)))


@pytest.mark.parametrize("ggml_type", [T.Q4_0, T.Q8_0, T.IQ4_NL], ids=lambda t: t.name)
def test_float16_scales_that_overflow_take_float32(ggml_type, monkeypatch):
    """A min of -8d, -128d overflows float16 for large d: plain tensors keep float32 scales,
    even when the large d only appears after the first chunk of rows. An implied min needs
    no such thing: its scale is the file's float16 d."""
    monkeypatch.setattr(gguf_repack, "_CHUNK_BYTES", 1)  # 16 rows a chunk
    raw = random_blocks(ggml_type, 40, 64, seed=2)
    raw[35, 0:2] = np.array([20000.0], dtype=np.float16).view(np.uint8)
    packed = repack(raw, ggml_type, 64, compact=False)
    assert packed.scale.dtype == packed.min.dtype == torch.float32
    assert torch.equal(unpack(packed, 40, 64), reference(raw, ggml_type))
    compact = repack(raw, ggml_type, 64)
    assert compact.scale.dtype == torch.float16
    assert torch.equal(unpack(compact, 40, 64), reference(raw, ggml_type))
    if load_quant_kernel():
        x = torch.randn(3, 64, generator=torch.Generator().manual_seed(15))
        assert torch.equal(quant_matmul(x, compact), quant_matmul(x, packed))


@pytest.mark.parametrize("ggml_type", ALL, ids=lambda t: t.name)
def test_chunks_and_inputs_do_not_change_the_result(ggml_type, monkeypatch):
    raw = random_blocks(ggml_type, 53, 512, seed=3)
    for compact in (True, False):
        monkeypatch.undo()
        whole = repack(raw, ggml_type, 512, compact=compact)
        monkeypatch.setattr(gguf_repack, "_CHUNK_BYTES", 1)  # 16 rows a chunk, the last one padded
        for packed in (repack(raw, ggml_type, 512, compact=compact),
                       repack(torch.from_numpy(raw), ggml_type, 512, compact=compact)):
            for a, b in zip((whole.codes, whole.scale, whole.min), (packed.codes, packed.scale, packed.min)):
                assert torch.equal(a, b)


def test_unsupported_types_and_shapes_are_refused():
    with pytest.raises(ValueError, match="Q2_K"):
        repack(np.zeros((16, 84), np.uint8), T.Q2_K, 256)
    with pytest.raises(ValueError, match="F16"):
        repack(np.zeros((16, 64), np.uint8), T.F16, 32)
    with pytest.raises(ValueError, match="multiples of 256"):
        repack(np.zeros((16, 72), np.uint8), T.Q4_K, 128)
    with pytest.raises(ValueError, match=r"uint8 \[rows, 144\]"):
        repack(np.zeros((16, 140), np.uint8), T.Q4_K, 256)
    assert T.Q2_K not in supported_types() and len(supported_types()) == 10


def activation_rounding(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """How far rounding the activations to int16 may move x @ W.T, per element: each input
    moves by at most half a step of its group's scale, max |x_group| / 32767, and the product
    by that times the group's sum of |w| (0.1% over, for the float32 scale itself)."""
    half_step = x.double().abs().reshape(x.shape[0], -1, GROUP).amax(-1) / 32767 / 2  # [rows, groups]
    w_groups = w.double().abs().reshape(w.shape[0], -1, GROUP).sum(-1)  # [out, groups]
    return 1.001 * half_step @ w_groups.T


def float_rounding(x: torch.Tensor, w: torch.Tensor, mins: torch.Tensor, terms: int) -> torch.Tensor:
    """How far the kernel's float32 arithmetic may move its result, per element.

    The integer dot products are exact. Per group come two terms (four with a scale per 16):
    scale x dot and min x activation sum, each within 3 roundings, summed in a fixed order:
    at most (terms + 3) * 2^-24 times the terms' magnitudes, d |codes| . |x| and |min| . |x|,
    with d |codes| <= |w| + |min|. Doubled for second-order effects.
    """
    magnitude = x.double().abs() @ (w.double().abs() + 2 * mins.double().abs()).T
    return 2 * (terms + 3) * 2.0**-24 * magnitude


def weight_and_mins(packed: PackedWeight, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    zero_codes = PackedWeight(torch.zeros_like(packed.codes), packed.scale, packed.min)
    return unpack(packed, rows, cols), unpack(zero_codes, rows, cols)  # mins: w at code 0


@needs_kernel
@pytest.mark.parametrize("ggml_type,source", SOURCES)
def test_kernel_computes_the_float64_product(ggml_type, source):
    rows, cols = 45, 768
    raw = blocks(ggml_type, source, rows, cols, seed=4)
    packed = repack(raw, ggml_type, cols)
    w, mins = weight_and_mins(packed, rows, cols)
    x = torch.randn(9, cols, generator=torch.Generator().manual_seed(5)) * torch.logspace(-2, 2, 9)[:, None]
    got = quant_matmul(x, packed)
    assert torch.equal(got[:, rows:], torch.zeros(9, got.shape[1] - rows))  # padding rows
    got = got[:, :rows].double()
    terms = 2 * cols // GROUP * (2 if ggml_type == T.Q6_K else 1)
    in_float32 = float_rounding(x, w, mins, terms)
    # Exactly the product with the int16-rounded activations, up to float32 rounding...
    assert ((got - quantized_activations(x) @ w.double().T).abs() <= in_float32).all()
    # ...so within that rounding's bound of the float64 product of the file's weights.
    want = x.double() @ reference(raw, ggml_type).double().T
    tolerance = activation_rounding(x, w) + in_float32
    assert ((got - want).abs() <= tolerance).all()
    assert (got - want).abs().max() > 1e-3 * tolerance.max()  # the bound is not vacuous


@needs_kernel
@pytest.mark.parametrize("ggml_type,source", [p for p in SOURCES if p.values[0] in COMPACT] +
                         [pytest.param(T.Q6_K, "gemma-like", id="Q6_K-gemma-like")])
def test_compact_scales_compute_as_plain_float32_ones(ggml_type, source):
    """The kernel multiplies the compact factors out exactly: bitwise the results of the plain
    float32 (or float16) scale and min they stand for, at every batch size."""
    rows, cols = 45, 1024
    if source == "gemma-like":  # realistic magnitudes: Q4_K-sized d, sub-scales over their range
        raw = random_blocks(ggml_type, rows, cols, seed=16)
        blocks_ = raw.reshape(rows, -1, 210)
        blocks_[..., 208:210] = (np.random.default_rng(17).uniform(1e-5, 1e-3, blocks_.shape[:2])
                                 .astype(np.float16).view(np.uint8).reshape(*blocks_.shape[:2], 2))
    else:
        raw = blocks(ggml_type, source, rows, cols, seed=16)
    compact, plain = repack(raw, ggml_type, cols), repack(raw, ggml_type, cols, compact=False)
    assert compact.scale.dtype != plain.scale.dtype or compact.min.shape != plain.min.shape
    x = torch.randn(19, cols, generator=torch.Generator().manual_seed(18)) * torch.logspace(-2, 2, 19)[:, None]
    for n in (1, 2, 7, 8, 9, 19):
        assert torch.equal(quant_matmul(x[:n], compact), quant_matmul(x[:n], plain))


@needs_kernel
@pytest.mark.parametrize("compact", [True, False], ids=["compact", "plain"])
@pytest.mark.parametrize("ggml_type", ALL, ids=lambda t: t.name)
def test_each_row_ignores_the_others(ggml_type, compact):
    packed = repack(random_blocks(ggml_type, 40, 512, seed=6), ggml_type, 512, compact=compact)
    x = torch.randn(19, 512, generator=torch.Generator().manual_seed(7)) * torch.logspace(-2, 2, 19)[:, None]
    batched = quant_matmul(x, packed)
    for i in range(19):
        assert torch.equal(quant_matmul(x[i:i + 1], packed)[0], batched[i])


@needs_kernel
@pytest.mark.parametrize("ggml_type", [T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_0], ids=lambda t: t.name)
def test_thread_count_does_not_change_a_bit(ggml_type):
    packed = repack(random_blocks(ggml_type, 64, 512, seed=12), ggml_type, 512)
    x = torch.randn(5, 512, generator=torch.Generator().manual_seed(13))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = quant_matmul(x, packed)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(quant_matmul(x, packed), alone)


@needs_kernel
def test_float32_scales_compute_as_float16_ones():
    """The kernel widens float16 scales to float32 first: the same values give the same bits."""
    packed = repack(random_blocks(T.Q4_1, 32, 256, seed=8), T.Q4_1, 256)
    as_float = PackedWeight(packed.codes, packed.scale.float(), packed.min.float())
    x = torch.randn(11, 256, generator=torch.Generator().manual_seed(9))
    assert packed.scale.dtype == torch.float16
    assert torch.equal(quant_matmul(x, packed), quant_matmul(x, as_float))


@needs_kernel
def test_kernel_refuses_mixed_scale_formats():
    packed = repack(random_blocks(T.Q6_K, 16, 256, seed=10), T.Q6_K, 256, compact=False)
    x = torch.randn(2, 256)
    with pytest.raises(RuntimeError, match="same dtype"):
        quant_matmul(x, PackedWeight(packed.codes, packed.scale, packed.min.half()))
    with pytest.raises(RuntimeError, match=r"\[tiles, groups, 2, 16\] float32"):
        quant_matmul(x, PackedWeight(packed.codes, packed.scale.half(), packed.min.half()))
    with pytest.raises(RuntimeError, match="float16 or float32"):
        quant_matmul(x, PackedWeight(packed.codes, packed.scale[:, :4].clone(), packed.min[:, :4].clone()))


@needs_kernel
def test_kernel_refuses_malformed_compact_scales():
    x = torch.randn(2, 512)
    k = repack(random_blocks(T.Q4_K, 16, 512, seed=19), T.Q4_K, 512)
    q6 = repack(random_blocks(T.Q6_K, 16, 512, seed=19), T.Q6_K, 512)
    q8 = repack(random_blocks(T.Q8_0, 16, 512, seed=19), T.Q8_0, 512)
    for scale, low in ((k.scale, k.min.float()),  # super-block factors in float32
                       (k.scale.view(torch.int8), k.min),  # Q4_K's layout with Q6_K's dtype
                       (q6.scale.view(torch.uint8), q6.min),  # and the other way round
                       (k.scale, k.min[:, :1].clone()),  # too few super-blocks
                       (q8.scale, q8.min.half()),  # a tile's factor in float16
                       (q8.scale.float(), q8.min)):  # an implied min with float32 scales
        with pytest.raises(RuntimeError, match="compact pair"):
            quant_matmul(x, PackedWeight(k.codes, scale, low))
