// y = x @ W.T for weights quantized per group of 32 inputs as w = d * code + m, with
// 4-bit codes 0..15 (GGUF's Q4_1) or 8-bit codes 0..255 (GGUF's Q8_0, shifted: m = -128 d),
// d and m per group (or per 16 inputs, as GGUF's Q6_K needs; see gguf_repack.py).
// The activations are rounded to int16 per group of 32 (scale = max |x| / 32767), so the
// inner product is an exact integer one on AVX-512 VNNI (32 multiply-adds per instruction)
// and the result stays within float rounding of the float product with the same weights.
// (llama.cpp rounds activations to int8 instead, which can swap near-tied tokens.)
//
// Vector lanes run over 16 output features, so one weight register serves every
// activation row of the block and results store without horizontal sums. Each output
// element accumulates its groups in the same order whatever the batch size, and the
// integer dot products are exact: a row's result never depends on the other rows.
//
// Packed weight layout, per tile of 16 output rows and group g of 32 inputs (offset g * 32):
//   4-bit codes [tiles, groups, 4, 64] uint8: byte (l * 4 + kk) of chunk p holds the codes
//     of output row l at inputs 8p + kk (low nibble) and 8p + 4 + kk (high nibble);
//   8-bit codes [tiles, groups, 8, 64] uint8: byte (l * 4 + kk) of chunk j holds the code
//     of output row l at input 4j + kk;
//   scale and min, one of (chosen from their dtypes and shapes):
//     [tiles, groups, 16] float16 both: one pair per group (preheat's own Q4_1/Q8_0 packing);
//     [tiles, groups, 16] float32 both: the same, for GGUF scales fp16 cannot hold;
//     [tiles, groups, 2, 16] float32 both: a pair per 16 inputs: element [g, h, l]
//       serves row l at inputs g * 32 + 16h .. + 15. The activations' int16 scale stays per 32;
//   or compact, the file's own factors multiplied here in float32, exactly (an fp16 times a
//   small integer, or a power of two, fits float32's mantissa), so each gives bitwise the
//   results of the float32 scale and min they stand for:
//     implied min (Q4_0, Q5_0, Q8_0, IQ4_NL): scale [tiles, groups, 16] float16, min
//       [tiles] float32 holding a factor per tile: min = min[t] * scale (-8, -16 or -128);
//     super-blocks (Q4_K, Q5_K; groups a multiple of 8): scale [tiles, groups, 2, 16] uint8
//       holding s_j at [g, 0, l] and m_j at [g, 1, l], min [tiles, groups / 8, 2, 16] float16
//       holding d at [b, 0, l] and -dmin at [b, 1, l] for groups 8b .. 8b + 7:
//       scale = d * s_j, min = -dmin * m_j;
//     symmetric per 16 (Q6_K): scale [tiles, groups, 2, 16] int8 holding s per 16 inputs as
//       above, min [tiles, groups / 8, 16] float16 holding d: scale = d * s, min = -32 scale.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kGroup = 32;
constexpr int64_t kTile = 16;         // output rows per register
constexpr int64_t kMaxRows = 8;       // activation rows per register block
constexpr float kActMax = 32767.f;    // activations become int16: near-exact, unlike int8
constexpr float kTiny = 1e-30f;

// How scale and min are stored (see the header): per group of 32 as float16 or float32, per 16
// as float32; or compact: float16 with an implied min, super-block factors (Q4_K), per 16 (Q6_K).
enum class Scales { kHalf, kFloat, kFloatHalves, kHalfImplied, kSuper, kSuper16 };

constexpr bool per_16(Scales s) { return s == Scales::kFloatHalves || s == Scales::kSuper16; }

struct QuantizedRows {
  std::vector<int16_t> codes;  // [rows, in], each quad stored as inputs 0, 2, 1, 3
  std::vector<float> scale;    // [rows, groups]: x ~= scale * code
  std::vector<float> sum;      // [rows, groups]: scale * sum of the group's codes
  std::vector<float> sum16;    // [rows, groups, 2]: the same per 16 inputs (per-16 formats only)
};

QuantizedRows quantize_rows(const float* x, int64_t rows, int64_t in, bool halves) {
  const int64_t n = rows * in / kGroup;
  QuantizedRows q{std::vector<int16_t>(rows * in), std::vector<float>(n), std::vector<float>(n),
                  std::vector<float>(halves ? 2 * n : 0)};
  // Pairs (0, 2) and (1, 3) of each quad meet the weight words that VNNI pairs up.
  const __m512i quad_order = _mm512_setr_epi32(0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15);
  for (int64_t r = 0; r < n; ++r) {
    const __m512 a = _mm512_loadu_ps(x + r * kGroup);
    const __m512 b = _mm512_loadu_ps(x + r * kGroup + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    // Groups below 1e-30 round to zero: their inverse scale would overflow.
    const __m512 inv = _mm512_set1_ps(amax > kTiny ? kActMax / amax : 0.f);
    const __m512i ca = _mm512_cvtps_epi32(_mm512_mul_ps(a, inv));  // round to nearest even
    const __m512i cb = _mm512_cvtps_epi32(_mm512_mul_ps(b, inv));
    auto* dst = reinterpret_cast<__m256i*>(q.codes.data() + r * kGroup);
    _mm256_storeu_si256(dst, _mm512_cvtsepi32_epi16(_mm512_permutexvar_epi32(quad_order, ca)));
    _mm256_storeu_si256(dst + 1, _mm512_cvtsepi32_epi16(_mm512_permutexvar_epi32(quad_order, cb)));
    q.scale[r] = amax > kTiny ? amax / kActMax : 0.f;
    q.sum[r] = q.scale[r] * static_cast<float>(_mm512_reduce_add_epi32(_mm512_add_epi32(ca, cb)));
    if (halves) {  // ca holds inputs 0..15, cb 16..31: the halves a per-16 min multiplies
      q.sum16[2 * r] = q.scale[r] * static_cast<float>(_mm512_reduce_add_epi32(ca));
      q.sum16[2 * r + 1] = q.scale[r] * static_cast<float>(_mm512_reduce_add_epi32(cb));
    }
  }
  return q;
}

struct TileArgs {
  const uint8_t* codes;    // this tile's [groups, 64 * bits]
  const uint8_t* scale;    // this tile's scale bytes, in the format's layout
  const uint8_t* min;      // this tile's min bytes (kHalfImplied: its float32 factor)
  const int16_t* x;        // first activation row of the block
  const float* x_scale;    // [rows, groups]
  const float* x_sum;      // [rows, groups], or [rows, groups, 2] per 16 inputs
  float* y;                // y[0, tile * 16]
  int64_t groups, in, out;
};

__m512 half16(const uint8_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
__m512 float32x16(const uint8_t* p) { return _mm512_loadu_ps(reinterpret_cast<const float*>(p)); }
__m512 u8x16(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
__m512 i8x16(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// The super-block factors of groups g .. g + 7 (g a multiple of 8): d and -dmin, or d alone.
template <Scales S>
void load_super(const TileArgs& a, int64_t g, __m512* super) {
  if constexpr (S == Scales::kSuper) {
    super[0] = half16(a.min + (g / 8) * 64);
    super[1] = half16(a.min + (g / 8) * 64 + 32);
  } else if constexpr (S == Scales::kSuper16) {
    super[0] = half16(a.min + (g / 8) * 32);
  }
}

// The 16 rows' scale d and min m for group g (and half `part` of it, per 16 inputs), in float32.
// The compact formats' products are exact: the same floats as the float32 formats hold.
template <Scales S>
void load_scales(const TileArgs& a, const __m512* super, int64_t g, int part, __m512& d, __m512& m) {
  if constexpr (S == Scales::kHalf) {
    d = half16(a.scale + g * 32);
    m = half16(a.min + g * 32);
  } else if constexpr (S == Scales::kFloat) {
    d = float32x16(a.scale + g * 64);
    m = float32x16(a.min + g * 64);
  } else if constexpr (S == Scales::kFloatHalves) {
    d = float32x16(a.scale + (2 * g + part) * 64);
    m = float32x16(a.min + (2 * g + part) * 64);
  } else if constexpr (S == Scales::kHalfImplied) {
    d = half16(a.scale + g * 32);
    m = _mm512_mul_ps(d, _mm512_set1_ps(*reinterpret_cast<const float*>(a.min)));
  } else if constexpr (S == Scales::kSuper) {
    d = _mm512_mul_ps(super[0], u8x16(a.scale + g * 32));
    m = _mm512_mul_ps(super[1], u8x16(a.scale + g * 32 + 16));
  } else {  // kSuper16
    d = _mm512_mul_ps(super[0], i8x16(a.scale + (2 * g + part) * 16));
    m = _mm512_mul_ps(d, _mm512_set1_ps(-32.f));
  }
}

// The codes of one tile and group as 8 registers; register j pairs with inputs 4j..4j+3.
template <int Bits>
void load_codes(const uint8_t* src, __m512i* w) {
  if constexpr (Bits == 8) {
    for (int j = 0; j < 8; ++j) w[j] = _mm512_loadu_si512(src + j * 64);
  } else {
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    for (int p = 0; p < 4; ++p) {
      const __m512i v = _mm512_loadu_si512(src + p * 64);
      w[2 * p] = _mm512_and_si512(v, nibble);
      w[2 * p + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
    }
  }
}

template <int Bits, int Rows, Scales S>
void tile_block(const TileArgs& a) {
  // A scale and min per 16 inputs split each group's dot product in two halves of 4 quads.
  constexpr int kParts = per_16(S) ? 2 : 1;
  constexpr int kQuads = 8 / kParts;
  __m512 acc[Rows];
  for (int i = 0; i < Rows; ++i) acc[i] = _mm512_setzero_ps();
  __m512 super[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  for (int64_t g = 0; g < a.groups; ++g) {
    if (g % 8 == 0) load_super<S>(a, g, super);
    __m512i w[8];
    load_codes<Bits>(a.codes + g * Bits * 64, w);
    for (int part = 0; part < kParts; ++part) {
      __m512 d, m;
      load_scales<S>(a, super, g, part, d, m);
      __m512i dot[Rows];
      for (int i = 0; i < Rows; ++i) dot[i] = _mm512_setzero_si512();
      const __m512i low_bytes = _mm512_set1_epi32(0x00FF00FF);
      for (int j = part * kQuads; j < (part + 1) * kQuads; ++j) {
        // Widen lane l's codes at inputs 4j + (0, 2) and 4j + (1, 3) to int16 pairs.
        const __m512i even = _mm512_and_si512(w[j], low_bytes);
        const __m512i odd = _mm512_srli_epi16(w[j], 8);
        for (int i = 0; i < Rows; ++i) {
          const auto* xq = reinterpret_cast<const int32_t*>(a.x + i * a.in + g * kGroup + 4 * j);
          dot[i] = _mm512_dpwssd_epi32(dot[i], even, _mm512_set1_epi32(xq[0]));
          dot[i] = _mm512_dpwssd_epi32(dot[i], odd, _mm512_set1_epi32(xq[1]));
        }
      }
      for (int i = 0; i < Rows; ++i) {
        const int64_t r = i * a.groups + g;
        // sum_k (d c_k + m) s x_k = d s (c . x) + m (s sum_k x_k)
        const __m512 ds = _mm512_mul_ps(d, _mm512_set1_ps(a.x_scale[r]));
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[i]), ds, acc[i]);
        acc[i] = _mm512_fmadd_ps(m, _mm512_set1_ps(a.x_sum[r * kParts + part]), acc[i]);
      }
    }
  }
  for (int i = 0; i < Rows; ++i) _mm512_storeu_ps(a.y + i * a.out, acc[i]);
}

template <int Bits, Scales S>
void run_block(int64_t rows, const TileArgs& a) {
  switch (rows) {
    case 1: return tile_block<Bits, 1, S>(a);
    case 2: return tile_block<Bits, 2, S>(a);
    case 3: return tile_block<Bits, 3, S>(a);
    case 4: return tile_block<Bits, 4, S>(a);
    case 5: return tile_block<Bits, 5, S>(a);
    case 6: return tile_block<Bits, 6, S>(a);
    case 7: return tile_block<Bits, 7, S>(a);
    default: return tile_block<Bits, 8, S>(a);
  }
}

template <Scales S>
void run_block(int64_t bits, int64_t rows, const TileArgs& a) {
  bits == 8 ? run_block<8, S>(rows, a) : run_block<4, S>(rows, a);
}

// The scale/min format from the tensors' dtypes and shapes (see the header).
Scales scale_format(const at::Tensor& scale, const at::Tensor& min, int64_t tiles, int64_t groups) {
  TORCH_CHECK(scale.is_contiguous() && min.is_contiguous(), "scale and min must be contiguous");
  const auto is = [](const at::Tensor& t, at::ScalarType type, std::vector<int64_t> shape) {
    return t.scalar_type() == type && t.sizes() == at::IntArrayRef(shape);
  };
  const auto h = at::kHalf, f = at::kFloat;
  if (is(scale, h, {tiles, groups, kTile})) {
    if (is(min, h, {tiles, groups, kTile})) return Scales::kHalf;
    if (is(min, f, {tiles})) return Scales::kHalfImplied;
  }
  if (is(scale, f, {tiles, groups, kTile}) && is(min, f, {tiles, groups, kTile})) return Scales::kFloat;
  if (is(scale, f, {tiles, groups, 2, kTile}) && is(min, f, {tiles, groups, 2, kTile}))
    return Scales::kFloatHalves;
  if (groups % 8 == 0 && is(scale, at::kByte, {tiles, groups, 2, kTile}) &&
      is(min, h, {tiles, groups / 8, 2, kTile}))
    return Scales::kSuper;
  if (groups % 8 == 0 && is(scale, at::kChar, {tiles, groups, 2, kTile}) &&
      is(min, h, {tiles, groups / 8, kTile}))
    return Scales::kSuper16;
  TORCH_CHECK(false,
              "scale and min must have the same dtype and shape, [tiles, groups, 16] float16 or "
              "float32 or [tiles, groups, 2, 16] float32, or be a compact pair: [tiles, groups, 16] "
              "float16 with [tiles] float32; [tiles, groups, 2, 16] uint8 with [tiles, groups / 8, "
              "2, 16] float16; [tiles, groups, 2, 16] int8 with [tiles, groups / 8, 16] float16");
}

// x [..., in] of a floating dtype -> [..., out] of the same dtype; computes in float32.
// Shape and dtype handling live here, not in Python: it runs for every matmul of a step.
at::Tensor quant_matmul(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scale,
                        const at::Tensor& min) {
  TORCH_CHECK(input.dim() >= 1 && at::isFloatingType(input.scalar_type()),
              "x must be a floating-point tensor");
  const at::Tensor x = input.reshape({-1, input.size(-1)}).to(at::kFloat).contiguous();
  TORCH_CHECK(codes.dim() == 3 && codes.scalar_type() == at::kByte && codes.is_contiguous() &&
                  (codes.size(2) == 256 || codes.size(2) == 512),
              "codes must be [tiles, groups, 256 or 512] uint8 (4- or 8-bit)");
  const int64_t bits = codes.size(2) / 64;
  const int64_t rows = x.size(0), in = x.size(1), tiles = codes.size(0), groups = codes.size(1);
  TORCH_CHECK(in == groups * kGroup, "x has ", in, " inputs, the weights ", groups * kGroup);
  const Scales format = scale_format(scale, min, tiles, groups);
  const int64_t parts = per_16(format) ? 2 : 1;
  const int64_t out = tiles * kTile;
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape.back() = out;
  at::Tensor y = at::empty({rows, out}, x.options());
  if (rows == 0) return y.view(shape).to(input.scalar_type());
  const QuantizedRows q = quantize_rows(x.data_ptr<float>(), rows, in, per_16(format));
  const float* x_sum = per_16(format) ? q.sum16.data() : q.sum.data();
  const auto* codes_p = codes.data_ptr<uint8_t>();
  const auto* scale_p = static_cast<const uint8_t*>(scale.data_ptr());
  const auto* min_p = static_cast<const uint8_t*>(min.data_ptr());
  // Bytes of a tile's scale and of its min: both tensors lead with the tile.
  const int64_t tile_scales = tiles ? scale.numel() / tiles * scale.element_size() : 0;
  const int64_t tile_mins = tiles ? min.numel() / tiles * min.element_size() : 0;
  float* y_p = y.data_ptr<float>();
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t r0 = 0; r0 < rows; r0 += kMaxRows) {
        const TileArgs a{codes_p + t * groups * bits * 64, scale_p + t * tile_scales,
                         min_p + t * tile_mins, q.codes.data() + r0 * in,
                         q.scale.data() + r0 * groups, x_sum + r0 * groups * parts,
                         y_p + r0 * out + t * kTile, groups, in, out};
        const int64_t n = std::min(kMaxRows, rows - r0);
        switch (format) {
          case Scales::kHalf: run_block<Scales::kHalf>(bits, n, a); break;
          case Scales::kFloat: run_block<Scales::kFloat>(bits, n, a); break;
          case Scales::kFloatHalves: run_block<Scales::kFloatHalves>(bits, n, a); break;
          case Scales::kHalfImplied: run_block<Scales::kHalfImplied>(bits, n, a); break;
          case Scales::kSuper: run_block<Scales::kSuper>(bits, n, a); break;
          case Scales::kSuper16: run_block<Scales::kSuper16>(bits, n, a); break;
        }
      }
    }
  });
  return y.view(shape).to(input.scalar_type());
}

}  // namespace

TORCH_LIBRARY(preheat, m) {
  m.def("quant_matmul(Tensor x, Tensor codes, Tensor scale, Tensor min) -> Tensor", &quant_matmul);
}
