"""GGUF's quantized blocks, repacked for the quantized matmul kernel with every weight kept exactly.

Dequantizing a GGUF file to floats and re-quantizing it into preheat's 4-bit groups changes
the weights. Every type here is instead w = scale * code + min per 32 inputs (per 16 for
Q6_K) with small integer codes, which is what the kernel multiplies, so the file's codes are
moved bit for bit into the kernel's layout and its scales become the kernel's scale and min:

- Q4_0 (d, min -8d), Q4_1 (d, m), Q4_K (d * s_j, -dmin * m_j): 4-bit codes;
- Q6_K (per-16 scales): 6-bit codes, as the file has them;
- Q5_0, Q5_1, Q5_K, Q8_0 (code + 128): 8-bit codes, the fifth bit being what no 4-bit code
  can hold;
- IQ4_NL, IQ4_XS: their table values are integers in [-127, 113], so code = value + 128
  with min -128 * scale: 8-bit codes.

Scale and min are stored compactly, as the file's own factors, which the kernel multiplies
in float32 exactly (``quant_matmul.cpp``'s header has the layouts):

- Q4_K, Q5_K ("super-blocks"): uint8 s_j and m_j per 32 inputs, float16 d and -dmin per 256;
  4.625 bits a weight for Q4_K (the file: 4.5), 8.625 for Q5_K's 8-bit codes;
- Q6_K ("symmetric per 16"): int8 s per 16 inputs, float16 d per 256, min -32 * scale: 6.5625,
  as in the file;
- Q4_0, Q5_0, Q8_0, IQ4_NL ("implied min"): float16 d per 32, min = -8, -16 or -128 times d,
  the factor a float32 per tile of 16 rows;
- Q4_1, Q5_1: float16 scale and min per 32, as the file's; IQ4_XS: float32 d * ls and
  -128 times that, per 32.

``repack(..., compact=False)`` gives instead the plain float16/float32 scale and min per 32
(per 16 for Q6_K) that these stand for, and the kernel's results are bitwise the same. There,
a float16 tensor whose shifted min would overflow float16 (d above 512 for Q8_0) falls back
to float32: exactness decides, never the type name alone.

The work is vectorized torch on 32-bit words (four codes at a time), a few MB of the file
at a time, so a 1 GB tensor needs no more than its output plus a few MB of temporaries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import IQ4_NL

from preheat.kernels.quant_matmul import GROUP, TILE, PackedWeight

_LOW = 0x0F0F0F0F  # the low nibble of each byte of a 32-bit word
_HIGH = -0x0F0F0F10  # 0xF0F0F0F0 as an int32: the high nibbles
_CHUNK_BYTES = 4 << 20  # file bytes repacked at a time: the temporaries stay a few MB
# IQ4_NL/IQ4_XS's table (integers in [-127, 113]) as codes, value + 128, for both nibbles of
# a byte at once: entry b holds the code of b's low nibble in its low byte, the high one's above.
_IQ4_CODES = (np.array(IQ4_NL.kvalues, dtype=np.int16) + 128).astype(np.uint16)
_IQ4_PAIRS = _IQ4_CODES[np.arange(256) & 15] | (_IQ4_CODES[np.arange(256) >> 4] << 8)

# What a decoder returns for a chunk of rows: the codes as int32 words [rows, groups, 4, 6 or 8]
# (word j holds the 4 bytes the kernel reads for chunk j), and float32 scale, min [rows, groups]
# or, per 16 inputs, [rows, groups, 2]; for the super-block types instead the file's factors,
# sub [rows, groups, 2] and super [rows, blocks (, 2)] (see _Layout.compact).
Decoded = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

SUPER = 8  # groups of 32 per K-quant block of 256


@dataclass(frozen=True)
class _Layout:
    bits: int  # the kernel's code width: 4 or 8
    half: bool  # float16 scale and min (when exact), in the plain form
    per16: bool  # a scale and min per 16 inputs
    decode: Callable[[torch.Tensor], Decoded]  # blocks [rows, blocks, type size] uint8
    # The compact form: None (plain float16/float32 scale and min); "implied" (float16 scale,
    # min = offset * scale); "super" (decode gives sub = (s_j, m_j) per group and super =
    # (d, -dmin) per block: scale d s_j, min -dmin m_j); "super16" (sub = s per 16 inputs,
    # super = d per block: scale d s, min -32 scale).
    compact: str | None = None
    offset: int = 0  # "implied": min = offset * scale


# -- reading fields of the blocks ---------------------------------------------------------


def _f16(blocks: torch.Tensor, at: int) -> torch.Tensor:
    """The float16 at byte ``at`` of every block, as float32 [rows, blocks]."""
    return blocks[..., at:at + 2].contiguous().view(torch.float16)[..., 0].float()


def _f16_bits(blocks: torch.Tensor, at: int) -> torch.Tensor:
    """The little-endian uint16 at byte ``at`` of every block, as int32 [rows, blocks]."""
    pair = blocks[..., at:at + 2].int()
    return pair[..., 0] | (pair[..., 1] << 8)


def _words(blocks: torch.Tensor, at: int, size: int) -> torch.Tensor:
    """Bytes ``at .. at + size`` of every block as int32 words [rows, blocks, size / 4]
    (little-endian: byte k of a word is its bits 8k..8k+7)."""
    part = blocks[..., at:at + size]
    if blocks.stride(-2) % 4 or at % 4 or blocks.storage_offset() % 4:
        part = part.contiguous()  # blocks of 18, 22, 34 or 210 bytes: words are not aligned
    return part.view(torch.int32)


def _pair_nibbles(even: torch.Tensor, odd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's 4-bit chunks from words of nibbles, for two sets of 8 inputs at a time.

    Byte kk of ``even`` and of ``odd`` hold inputs kk and 4 + kk of two sets: set A in the
    low nibbles, set B in the high ones. The kernel wants byte kk = input kk | input 4 + kk
    << 4 for each set: one word of A, one of B.
    """
    a = (even & _LOW) | ((odd & _LOW) << 4)
    b = ((even >> 4) & _LOW) | (odd & _HIGH)
    return a, b


def _nibble_bytes(q: torch.Tensor) -> torch.Tensor:
    """Words [..., 4] of 16 bytes holding 32 nibbles (input i low in byte i, input 16 + i
    high) -> words [..., 8] of the 32 nibbles as bytes in input order."""
    return torch.cat([q & _LOW, (q >> 4) & _LOW], dim=-1)


def _bits_to_bytes(qh: torch.Tensor) -> torch.Tensor:
    """32 high bits (int32 [rows, blocks]; bit i for input i) -> words [rows, blocks, 8]
    whose byte i is 16 where bit i is set: the fifth bit of a 5-bit code."""
    nibble = (qh[..., None] >> torch.arange(0, 32, 4, dtype=torch.int32)) & 0xF
    # x * (1 + 2^7 + 2^14 + 2^21) copies bit k of x to bits k + 7j (j = 0..3), all distinct,
    # so nothing carries; the mask keeps the copies at j = k: bit k lands at bit 8k.
    return ((nibble * 0x204081) & 0x01010101) << 4


def _k_scales(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 6-bit scales and mins [rows, blocks, 8] from their 12 bytes at byte 4."""
    s = blocks[..., 4:16]
    low_s, low_m, rest = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    scale = torch.cat([low_s & 0x3F, (rest & 0x0F) | ((low_s >> 2) & 0x30)], dim=-1)
    low = torch.cat([low_m & 0x3F, (rest >> 4) | ((low_m >> 2) & 0x30)], dim=-1)
    return scale.float(), low.float()


# -- one decoder per type ------------------------------------------------------------------


def _q4_0(blocks: torch.Tensor) -> Decoded:
    d = _f16(blocks, 0)
    q = _words(blocks, 2, 16)
    a, b = _pair_nibbles(q[..., 0::2], q[..., 1::2])  # inputs 0..15 low, 16..31 high
    return torch.cat([a, b], dim=-1), d, d * -8


def _q4_1(blocks: torch.Tensor) -> Decoded:
    q = _words(blocks, 4, 16)
    a, b = _pair_nibbles(q[..., 0::2], q[..., 1::2])
    return torch.cat([a, b], dim=-1), _f16(blocks, 0), _f16(blocks, 2)


def _q5(blocks: torch.Tensor, at: int) -> torch.Tensor:
    """The 5-bit codes of Q5_0/Q5_1 (high bits at ``at``, nibbles after) as words [rows, blocks, 8]."""
    return _nibble_bytes(_words(blocks, at + 4, 16)) | _bits_to_bytes(_words(blocks, at, 4)[..., 0])


def _q5_0(blocks: torch.Tensor) -> Decoded:
    d = _f16(blocks, 0)
    return _q5(blocks, 2), d, d * -16


def _q5_1(blocks: torch.Tensor) -> Decoded:
    return _q5(blocks, 4), _f16(blocks, 0), _f16(blocks, 2)


def _q8_0(blocks: torch.Tensor) -> Decoded:
    d = _f16(blocks, 0)
    return _words(blocks, 2, 32) ^ -0x7F7F7F80, d, d * -128  # int8 q -> q + 128: flip each sign bit


def _k_factors(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's sub-scales and sub-mins (s_j, m_j) [rows, blocks * 8, 2] and their factors
    (d, -dmin) [rows, blocks, 2]: w = d s_j q - dmin m_j."""
    s, m = _k_scales(blocks)
    sub = torch.stack([s, m], dim=-1).reshape(blocks.shape[0], -1, 2)
    return sub, torch.stack([_f16(blocks, 0), -_f16(blocks, 2)], dim=-1)


def _q4_k(blocks: torch.Tensor) -> Decoded:
    w = _words(blocks, 16, 128).unflatten(-1, (4, 8))  # 4 pairs of groups: 2j low, 2j + 1 high
    a, b = _pair_nibbles(w[..., 0::2], w[..., 1::2])
    return torch.stack([a, b], dim=-2).reshape(blocks.shape[0], -1, 4), *_k_factors(blocks)


def _q5_k(blocks: torch.Tensor) -> Decoded:
    q = _words(blocks, 48, 128).unflatten(-1, (4, 1, 8))
    low = (q >> torch.tensor([0, 4], dtype=torch.int32)[:, None]) & _LOW  # [rows, blocks, 4, 2, 8]
    qh = _words(blocks, 16, 32)[..., None, :]  # bit j of byte i: input i of group j
    high = ((qh >> torch.arange(8, dtype=torch.int32)[:, None]) & 0x01010101) << 4
    codes = low.reshape(high.shape) | high
    return codes.reshape(blocks.shape[0], -1, 8), *_k_factors(blocks)


def _q6_k(blocks: torch.Tensor) -> Decoded:
    rows = blocks.shape[0]
    # Input 128a + 64h + i takes nibble h of low byte 64a + i, and input 128a + 32t + i
    # bits 2t, 2t + 1 of high byte 32a + i.
    ql = _words(blocks, 0, 128).unflatten(-1, (2, 1, 16))
    low = (ql >> torch.tensor([0, 4], dtype=torch.int32)[:, None]) & _LOW
    qh = _words(blocks, 128, 64).unflatten(-1, (2, 1, 8))
    high = ((qh >> torch.arange(0, 8, 2, dtype=torch.int32)[:, None]) & 0x03030303) << 4
    codes = low.reshape(*high.shape[:2], 64) | high.reshape(*high.shape[:2], 64)  # 6-bit q
    sub = blocks[..., 192:208].view(torch.int8).float().reshape(rows, -1, 2)  # s per 16 inputs
    return _six_bit_chunks(codes.reshape(rows, -1, 8)), sub, _f16(blocks, 208)


def _six_bit_chunks(words: torch.Tensor) -> torch.Tensor:
    """Words [rows, groups, 8] of 6-bit codes as bytes (word j: inputs 4j..4j+3) -> the
    kernel's 6 chunks: the low 4 bits paired as 4-bit codes are, then 2 high bits a quad."""
    low = (words[..., 0::2] & _LOW) | ((words[..., 1::2] & _LOW) << 4)
    two = (words >> 4) & 0x03030303
    quads = two.unflatten(-1, (2, 4)) << (2 * torch.arange(4, dtype=torch.int32))
    high = quads[..., 0] | quads[..., 1] | quads[..., 2] | quads[..., 3]
    return torch.cat([low, high], dim=-1)


def _iq4_codes(qs: torch.Tensor) -> torch.Tensor:
    """Bytes [..., 16] holding 32 table indices (input i low in byte i, input 16 + i high)
    -> words [..., 8] of their codes in input order."""
    pairs = torch.from_numpy(_IQ4_PAIRS[qs.numpy()]).view(torch.uint8).unflatten(-1, (16, 2))
    return pairs.transpose(-1, -2).contiguous().view(torch.int32).flatten(-2)


def _iq4_nl(blocks: torch.Tensor) -> Decoded:
    d = _f16(blocks, 0)
    return _iq4_codes(blocks[..., 2:18]), d, d * -128


def _iq4_xs(blocks: torch.Tensor) -> Decoded:
    rows = blocks.shape[0]
    # Group j's 6-bit scale: nibble j % 2 of byte 4 + j / 2, then bits 2j, 2j + 1 of bytes 2..3.
    low = (blocks[..., 4:8, None] >> torch.tensor([0, 4], dtype=torch.uint8)) & 0x0F
    high = (_f16_bits(blocks, 2)[..., None] >> torch.arange(0, 16, 2, dtype=torch.int32)) & 3
    ls = (low.flatten(-2).int() | (high << 4)) - 32
    scale = (_f16(blocks, 0)[..., None] * ls.float()).reshape(rows, -1)
    codes = _iq4_codes(blocks[..., 8:136].unflatten(-1, (8, 16)))
    return codes.reshape(rows, -1, 8), scale, scale * -128


_T = GGMLQuantizationType
_LAYOUTS: dict[GGMLQuantizationType, _Layout] = {
    _T.Q4_0: _Layout(4, True, False, _q4_0, "implied", -8),
    _T.Q4_1: _Layout(4, True, False, _q4_1),
    _T.Q5_0: _Layout(8, True, False, _q5_0, "implied", -16),
    _T.Q5_1: _Layout(8, True, False, _q5_1),
    _T.Q8_0: _Layout(8, True, False, _q8_0, "implied", -128),
    _T.Q4_K: _Layout(4, False, False, _q4_k, "super"),
    _T.Q5_K: _Layout(8, False, False, _q5_k, "super"),
    _T.Q6_K: _Layout(6, False, True, _q6_k, "super16"),
    _T.IQ4_NL: _Layout(8, True, False, _iq4_nl, "implied", -128),
    _T.IQ4_XS: _Layout(8, False, False, _iq4_xs),
}


def _expand(compact: str, sub: torch.Tensor, sup: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 scale and min [rows, groups (, 2)] that super-block factors stand for
    (exact: a float16 times a small integer, or -32 times a float32)."""
    if compact == "super":
        per_group = sup.repeat_interleave(SUPER, dim=1)  # [rows, groups, 2]: d, -dmin
        return per_group[..., 0] * sub[..., 0], per_group[..., 1] * sub[..., 1]
    scale = sup.repeat_interleave(SUPER, dim=1)[..., None] * sub  # "super16": [rows, groups, 2]
    return scale, scale * -32


# -- public API ----------------------------------------------------------------------------


def supported_types() -> list[GGMLQuantizationType]:
    """The GGML types ``repack`` maps exactly onto the kernel."""
    return list(_LAYOUTS)


def bits_per_weight(ggml_type: GGMLQuantizationType, compact: bool = True) -> float:
    """Memory per weight of ``repack``'s result (codes, scale and min), in bits, in the
    usual case (float16 scales that overflow take float32 and more), leaving out the
    implied-min formats' factor per tile (32 bits per 16 rows)."""
    layout = _layout(ggml_type)
    if compact and layout.compact == "super":
        return layout.bits + 2 * 8 / GROUP + 2 * 16 / (SUPER * GROUP)
    if compact and layout.compact == "super16":
        return layout.bits + 8 / (GROUP // 2) + 16 / (SUPER * GROUP)
    if compact and layout.compact == "implied":
        return layout.bits + 16 / GROUP
    inputs_per_scale = GROUP // 2 if layout.per16 else GROUP
    return layout.bits + 2 * (16 if layout.half else 32) / inputs_per_scale


def repack(raw: torch.Tensor | np.ndarray, ggml_type: GGMLQuantizationType, in_features: int,
           compact: bool = True) -> PackedWeight:
    """A GGUF tensor's raw blocks, uint8 [rows, row_bytes], in the kernel's layout.

    Every weight keeps the value ``gguf.quants.dequantize`` gives it. Rows are padded with
    zero weights to a multiple of 16. ``compact`` picks the type's compact scale format (see
    the module's docstring), else the plain float16/float32 scale and min per 32 (per 16 for
    Q6_K) it stands for: the kernel gives bitwise the same results from either. Raises
    ValueError for a type not in ``supported_types()`` or bytes that do not match ``in_features``.
    """
    layout = _layout(ggml_type)
    ggml_type = GGMLQuantizationType(ggml_type)
    form = layout.compact if compact else None
    rows, row_bytes = _check_shape(raw, ggml_type, in_features)
    tiles, groups = -(-rows // TILE), in_features // GROUP
    codes = torch.empty(tiles, groups, 64 * layout.bits, dtype=torch.uint8)
    if form == "super":
        scale = torch.empty(tiles, groups, 2, TILE, dtype=torch.uint8)
        low = torch.empty(tiles, groups // SUPER, 2, TILE, dtype=torch.float16)
    elif form == "super16":
        scale = torch.empty(tiles, groups, 2, TILE, dtype=torch.int8)
        low = torch.empty(tiles, groups // SUPER, TILE, dtype=torch.float16)
    else:
        parts = (2,) if layout.per16 else ()
        scale = torch.empty(tiles, groups, *parts, TILE, dtype=torch.float16 if layout.half else torch.float32)
        low = torch.full((tiles,), float(layout.offset)) if form == "implied" else torch.empty_like(scale)
    step = max(1, _CHUNK_BYTES // (row_bytes * TILE)) * TILE
    for r0 in range(0, rows, step):
        blocks = _chunk(raw, r0, min(r0 + step, rows), row_bytes)
        words, s, m = layout.decode(blocks.view(blocks.shape[0], -1, GGML_QUANT_SIZES[ggml_type][1]))
        t0, t1 = r0 // TILE, r0 // TILE + blocks.shape[0] // TILE
        _place_codes(codes[t0:t1], words)
        if layout.compact in ("super", "super16") and form is None:
            s, m = _expand(layout.compact, s, m)
        if scale.dtype == torch.float16 and form is None and not (_fits_half(s) and _fits_half(m)):
            scale, low = scale.float(), low.float()  # what was written so far converts exactly
        _place_scales(scale[t0:t1], s)
        if form != "implied":
            _place_scales(low[t0:t1], m)
    return PackedWeight(codes, scale, low)


def unpack(pw: PackedWeight, out_features: int, in_features: int) -> torch.Tensor:
    """The float32 weights [out_features, in_features] a packed weight holds (padding rows
    dropped): scale * code + min, the product and then the sum rounded to float32 as gguf's
    dequantizers round them, so ``unpack(repack(raw, t, n), rows, n)`` equals
    ``gguf.quants.dequantize(raw, t)``."""
    if out_features > pw.codes.shape[0] * TILE:
        raise ValueError(f"a packed weight of {pw.codes.shape[0] * TILE} rows has no {out_features}")
    return unpack_rows(pw, torch.arange(out_features), in_features)


def unpack_rows(pw: PackedWeight, rows: torch.Tensor, in_features: int) -> torch.Tensor:
    """float32 [len(rows), in_features]: the weight rows ``rows`` (int64 indices), as ``unpack``
    gives them; an embedding lookup in a packed (tied) head touches only those."""
    tiles, groups, width = pw.codes.shape
    if in_features != groups * GROUP:
        raise ValueError(f"a packed weight of {groups * GROUP} inputs cannot be read as {in_features}")
    tile, lane = rows // TILE, rows % TILE
    words = pw.codes.view(torch.int32).view(tiles, groups, width // 64, TILE)[tile, :, :, lane]
    # [rows, groups, chunk j, byte kk]: input 4j + kk, or for 4 bits 8j + kk and 8j + 4 + kk
    raw = words.contiguous().view(torch.uint8).view(len(rows), groups, -1, 4)
    b = raw if width == 512 else torch.stack([raw[:, :, :4] & 0x0F, raw[:, :, :4] >> 4], dim=-2)
    b = b.reshape(len(rows), groups, 8, 4)  # [rows, groups, quad, kk]
    if width == 384:  # 6 bits: chunk 4 + c holds quad 4c + q's high bits at bits 2q, 2q + 1
        shifts = 2 * torch.arange(4, dtype=torch.uint8)[:, None]
        b = b | (((raw[:, :, 4:, None, :] >> shifts) & 3) << 4).reshape(b.shape)
    scale, low = (t.reshape(len(rows), -1, 1) for t in _float_scales(pw, tile, lane))
    codes = b.reshape(len(rows), scale.shape[1], -1).float()  # [rows, scales, inputs per scale]
    w = codes * scale
    w = w + low  # not fused: the product rounds first, as in gguf's numpy
    return w.view(len(rows), in_features)


# -- helpers -------------------------------------------------------------------------------


def _float_scales(pw: PackedWeight, tile: torch.Tensor, lane: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (tile, lane)'s float32 scale and min [rows, groups (, 2)] in any of the kernel's
    formats, compact ones multiplied out exactly as the kernel does."""
    if pw.scale.dtype in (torch.uint8, torch.int8):  # super-block factors
        compact = "super" if pw.scale.dtype == torch.uint8 else "super16"
        return _expand(compact, pw.scale[tile, ..., lane].float(), pw.min[tile, ..., lane].float())
    scale = pw.scale[tile, ..., lane].float()
    if pw.min.dim() == 1:  # implied: a factor per tile
        return scale, scale * pw.min[tile].float()[:, None]
    return scale, pw.min[tile, ..., lane].float()


def _layout(ggml_type: GGMLQuantizationType) -> _Layout:
    layout = _LAYOUTS.get(GGMLQuantizationType(ggml_type))
    if layout is None:
        names = ", ".join(t.name for t in _LAYOUTS)
        raise ValueError(f"GGML type {GGMLQuantizationType(ggml_type).name} cannot be repacked "
                         f"for the quantized matmul kernel (supported: {names})")
    return layout


def _check_shape(raw: torch.Tensor | np.ndarray, ggml_type: GGMLQuantizationType,
                 in_features: int) -> tuple[int, int]:
    block, type_size = GGML_QUANT_SIZES[ggml_type]
    if in_features % block:
        raise ValueError(f"{ggml_type.name} rows hold multiples of {block} weights, not {in_features}")
    row_bytes = in_features // block * type_size
    if raw.dtype not in (np.uint8, torch.uint8) or len(raw.shape) != 2 or raw.shape[1] != row_bytes:
        raise ValueError(f"{ggml_type.name} weights of {in_features} inputs need uint8 [rows, {row_bytes}], "
                         f"got {raw.dtype} {tuple(raw.shape)}")
    return raw.shape[0], row_bytes


def _chunk(raw: torch.Tensor | np.ndarray, r0: int, r1: int, row_bytes: int) -> torch.Tensor:
    """Rows r0..r1 of the file's bytes, copied (a memory map may be read-only and unaligned)
    and padded with zero rows, which are zero weights in every type, to a multiple of 16."""
    n = r1 - r0
    out = torch.empty(-(-n // TILE) * TILE, row_bytes, dtype=torch.uint8)
    if isinstance(raw, np.ndarray):
        out[:n].numpy()[...] = raw[r0:r1]
    else:
        out[:n].copy_(raw[r0:r1])
    out[n:].zero_()
    return out


def _place_codes(dst: torch.Tensor, words: torch.Tensor) -> None:
    """Words [rows, groups, chunks] -> the kernel's [tiles, groups, chunks, 16 rows] words."""
    tiles, groups, width = dst.shape
    src = words.reshape(tiles, TILE, groups, width // 64)
    dst.view(torch.int32).view(tiles, groups, width // 64, TILE).copy_(src.permute(0, 2, 3, 1))


def _place_scales(dst: torch.Tensor, s: torch.Tensor) -> None:
    """Scales [rows, groups (, 2)] -> [tiles, groups (, 2), 16 rows], in dst's dtype."""
    src = s.reshape(dst.shape[0], TILE, *s.shape[1:])
    dst.copy_(src.movedim(1, -1))


def _fits_half(t: torch.Tensor) -> bool:
    """Whether float16 holds every value of ``t`` exactly."""
    return bool(torch.equal(t.half().float(), t))

