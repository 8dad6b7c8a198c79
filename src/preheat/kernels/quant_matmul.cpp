// y = x @ W.T for weights quantized per group of 32 inputs as w = d * code + m, with
// 4-bit codes 0..15 (GGUF's Q4_1), 6-bit codes 0..63 (GGUF's Q6_K) or 8-bit codes 0..255
// (GGUF's Q8_0, shifted: m = -128 d),
// d and m per group (or per 16 inputs, as GGUF's Q6_K needs; see gguf_repack.py).
// The activations are rounded to int16 per group of 32 (scale = max |x| / 32767), so the
// inner product is an exact integer one (int16 pairs multiplied and summed into int32: one
// instruction per 32 on AVX-512 VNNI, two per 16 on AVX2) and the result stays within float
// rounding of the float product with the same weights.
// (llama.cpp rounds activations to int8 instead, which can swap near-tied tokens.)
//
// Vector lanes run over output features (16, or 8 on AVX2), so one weight register serves every
// activation row of the block and results store without horizontal sums. Each output
// element accumulates its groups in the same order whatever the batch size, and the
// integer dot products are exact: a row's result never depends on the other rows.
//
// Packed weight layout, per tile of 16 output rows and group g of 32 inputs (offset g * 32):
//   4-bit codes [tiles, groups, 4, 64] uint8: byte (l * 4 + kk) of chunk p holds the codes
//     of output row l at inputs 8p + kk (low nibble) and 8p + 4 + kk (high nibble);
//   6-bit codes [tiles, groups, 6, 64] uint8: chunks 0-3 hold the codes' low 4 bits as the
//     4-bit layout does; byte (l * 4 + kk) of chunk 4 + c holds, at bits 2q and 2q + 1, the
//     high 2 bits of row l's code at input 4 (4c + q) + kk;
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

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kGroup = 32;
constexpr int64_t kTile = 16;         // output rows per tile of the packed layout
constexpr float kActMax = 32767.f;    // activations become int16: near-exact, unlike int8
constexpr float kTiny = 1e-30f;

// The instruction set, chosen by the build flags (quant_matmul.py): AVX-512 VNNI runs a tile's
// 16 rows in one register; AVX2 runs it as two halves of 8, each a pass of its own (AVX2 has
// 16 vector registers, AVX-512 32). The integer dot products are exact on both, so both give
// the same results.
#if defined(__AVX512VNNI__)
constexpr int64_t kLanes = 16;
constexpr int kMaxRows = 8;           // activation rows per register block
using VecF = __m512;
using VecI = __m512i;
inline VecF f_zero() { return _mm512_setzero_ps(); }
inline VecF f_set(float v) { return _mm512_set1_ps(v); }
inline VecF f_mul(VecF a, VecF b) { return _mm512_mul_ps(a, b); }
inline VecF f_fmadd(VecF a, VecF b, VecF c) { return _mm512_fmadd_ps(a, b, c); }
inline VecF f_from_i32(VecI a) { return _mm512_cvtepi32_ps(a); }
inline void f_store(float* p, VecF a) { _mm512_storeu_ps(p, a); }
inline VecF f_load(const uint8_t* p) { return _mm512_loadu_ps(reinterpret_cast<const float*>(p)); }
inline VecF f_half(const uint8_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline VecF f_u8(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline VecF f_i8(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline VecI i_zero() { return _mm512_setzero_si512(); }
inline VecI i_load(const uint8_t* p) { return _mm512_loadu_si512(p); }
inline VecI i_set(int32_t v) { return _mm512_set1_epi32(v); }
inline VecI i_and(VecI a, VecI b) { return _mm512_and_si512(a, b); }
inline VecI i_or(VecI a, VecI b) { return _mm512_or_si512(a, b); }
template <int N> VecI i_srli16(VecI a) { return _mm512_srli_epi16(a, N); }
template <int N> VecI i_slli16(VecI a) { return _mm512_slli_epi16(a, N); }
// acc + the int16 pairs of a times those of b, summed per 32-bit lane.
inline VecI i_dot_pairs(VecI acc, VecI a, VecI b) { return _mm512_dpwssd_epi32(acc, a, b); }
#else
constexpr int64_t kLanes = 8;
constexpr int kMaxRows = 6;           // 6 accumulators and 6 dot products fit beside the codes
using VecF = __m256;
using VecI = __m256i;
inline VecF f_zero() { return _mm256_setzero_ps(); }
inline VecF f_set(float v) { return _mm256_set1_ps(v); }
inline VecF f_mul(VecF a, VecF b) { return _mm256_mul_ps(a, b); }
inline VecF f_fmadd(VecF a, VecF b, VecF c) { return _mm256_fmadd_ps(a, b, c); }
inline VecF f_from_i32(VecI a) { return _mm256_cvtepi32_ps(a); }
inline void f_store(float* p, VecF a) { _mm256_storeu_ps(p, a); }
inline VecF f_load(const uint8_t* p) { return _mm256_loadu_ps(reinterpret_cast<const float*>(p)); }
inline VecF f_half(const uint8_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline VecF f_u8(const uint8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline VecF f_i8(const uint8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline VecI i_zero() { return _mm256_setzero_si256(); }
inline VecI i_load(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline VecI i_set(int32_t v) { return _mm256_set1_epi32(v); }
inline VecI i_and(VecI a, VecI b) { return _mm256_and_si256(a, b); }
inline VecI i_or(VecI a, VecI b) { return _mm256_or_si256(a, b); }
template <int N> VecI i_srli16(VecI a) { return _mm256_srli_epi16(a, N); }
template <int N> VecI i_slli16(VecI a) { return _mm256_slli_epi16(a, N); }
inline VecI i_dot_pairs(VecI acc, VecI a, VecI b) { return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)); }
#endif

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

// Group r of x rounded to int16 (to nearest even, as the vector conversion does); returns the
// sums of codes of its two halves. Plain C++ that the compiler vectorizes for the target.
void quantize_group(const float* x, float inv, int16_t* codes, int32_t* half_sums) {
  int32_t c[kGroup];
  for (int k = 0; k < kGroup; ++k) c[k] = static_cast<int32_t>(std::nearbyint(x[k] * inv));
  // Pairs (0, 2) and (1, 3) of each quad meet the weight words that the dot product pairs up.
  for (int k = 0; k < kGroup; k += 4) {
    codes[k] = c[k], codes[k + 1] = c[k + 2], codes[k + 2] = c[k + 1], codes[k + 3] = c[k + 3];
  }
  half_sums[0] = half_sums[1] = 0;
  for (int k = 0; k < kGroup; ++k) half_sums[k / 16] += c[k];
}

QuantizedRows quantize_rows(const float* x, int64_t rows, int64_t in, bool halves) {
  const int64_t n = rows * in / kGroup;
  QuantizedRows q{std::vector<int16_t>(rows * in), std::vector<float>(n), std::vector<float>(n),
                  std::vector<float>(halves ? 2 * n : 0)};
  for (int64_t r = 0; r < n; ++r) {
    const float* group = x + r * kGroup;
    float amax = 0.f;
    for (int k = 0; k < kGroup; ++k) amax = std::max(amax, std::fabs(group[k]));
    // Groups below 1e-30 round to zero: their inverse scale would overflow.
    int32_t sums[2];
    quantize_group(group, amax > kTiny ? kActMax / amax : 0.f, q.codes.data() + r * kGroup, sums);
    q.scale[r] = amax > kTiny ? amax / kActMax : 0.f;
    q.sum[r] = q.scale[r] * static_cast<float>(sums[0] + sums[1]);
    if (halves) {  // the halves a per-16 min multiplies
      q.sum16[2 * r] = q.scale[r] * static_cast<float>(sums[0]);
      q.sum16[2 * r + 1] = q.scale[r] * static_cast<float>(sums[1]);
    }
  }
  return q;
}

// One pass over a tile: rows lane0 .. lane0 + kLanes - 1 of its 16.
struct TileArgs {
  const uint8_t* codes;    // this tile's [groups, 64 * bits]
  const uint8_t* scale;    // this tile's scale bytes, in the format's layout
  const uint8_t* min;      // this tile's min bytes (kHalfImplied: its float32 factor)
  const int16_t* x;        // first activation row of the block
  const float* x_scale;    // [rows, groups]
  const float* x_sum;      // [rows, groups], or [rows, groups, 2] per 16 inputs
  float* y;                // y[0, tile * 16 + lane0]
  int64_t groups, in, out, lane0;
};

// The super-block factors of groups g .. g + 7 (g a multiple of 8): d and -dmin, or d alone.
template <Scales S>
void load_super(const TileArgs& a, int64_t g, VecF* super) {
  const int64_t half = a.lane0 * 2;  // bytes before this pass's first row in a float16 vector
  if constexpr (S == Scales::kSuper) {
    super[0] = f_half(a.min + (g / 8) * 64 + half);
    super[1] = f_half(a.min + (g / 8) * 64 + 32 + half);
  } else if constexpr (S == Scales::kSuper16) {
    super[0] = f_half(a.min + (g / 8) * 32 + half);
  }
}

// The pass's rows' scale d and min m for group g (and half `part` of it, per 16 inputs), in
// float32. The compact formats' products are exact: the same floats as the float32 formats hold.
template <Scales S>
void load_scales(const TileArgs& a, const VecF* super, int64_t g, int part, VecF& d, VecF& m) {
  const int64_t half = a.lane0 * 2, single = a.lane0 * 4, byte = a.lane0;
  if constexpr (S == Scales::kHalf) {
    d = f_half(a.scale + g * 32 + half);
    m = f_half(a.min + g * 32 + half);
  } else if constexpr (S == Scales::kFloat) {
    d = f_load(a.scale + g * 64 + single);
    m = f_load(a.min + g * 64 + single);
  } else if constexpr (S == Scales::kFloatHalves) {
    d = f_load(a.scale + (2 * g + part) * 64 + single);
    m = f_load(a.min + (2 * g + part) * 64 + single);
  } else if constexpr (S == Scales::kHalfImplied) {
    d = f_half(a.scale + g * 32 + half);
    m = f_mul(d, f_set(*reinterpret_cast<const float*>(a.min)));
  } else if constexpr (S == Scales::kSuper) {
    d = f_mul(super[0], f_u8(a.scale + g * 32 + byte));
    m = f_mul(super[1], f_u8(a.scale + g * 32 + 16 + byte));
  } else {  // kSuper16
    d = f_mul(super[0], f_i8(a.scale + (2 * g + part) * 16 + byte));
    m = f_mul(d, f_set(-32.f));
  }
}

// The pass's codes of quad j of a group (src: the group's codes), lane l's inputs 4j..4j+3.
// Loaded where used: keeping a group's 8 code registers live spills AVX2's 16 registers.
template <int Bits>
VecI code_register(const uint8_t* src, int j) {
  if constexpr (Bits == 8) {
    return i_load(src + j * 64);
  } else if constexpr (Bits == 6) {  // the low 4 bits as for 4-bit codes, then the high 2:
    // quad j's sit at bits 2 (j % 4) of chunk 4 + j / 4's bytes, and move to bits 4 and 5.
    const VecI h = i_load(src + 256 + (j / 4) * 64);
    const int q = j % 4;
    const VecI high = q == 0 ? i_slli16<4>(h) : q == 1 ? i_slli16<2>(h) : q == 2 ? h : i_srli16<2>(h);
    return i_or(code_register<4>(src, j), i_and(high, i_set(0x30303030)));
  } else {  // quads 2p and 2p + 1 share chunk p: low and high nibble
    const VecI v = i_load(src + (j / 2) * 64);
    return i_and(j % 2 ? i_srli16<4>(v) : v, i_set(0x0F0F0F0F));
  }
}

template <int Bits, int Rows, Scales S>
void tile_block(const TileArgs& a) {
  // A scale and min per 16 inputs split each group's dot product in two halves of 4 quads.
  constexpr int kParts = per_16(S) ? 2 : 1;
  constexpr int kQuads = 8 / kParts;
  VecF acc[Rows];
  for (int i = 0; i < Rows; ++i) acc[i] = f_zero();
  VecF super[2] = {f_zero(), f_zero()};
  for (int64_t g = 0; g < a.groups; ++g) {
    if (g % 8 == 0) load_super<S>(a, g, super);
    const uint8_t* codes = a.codes + g * Bits * 64 + a.lane0 * 4;  // each row's 4 bytes of a chunk
    for (int part = 0; part < kParts; ++part) {
      VecF d, m;
      load_scales<S>(a, super, g, part, d, m);
      VecI dot[Rows];
      for (int i = 0; i < Rows; ++i) dot[i] = i_zero();
      const VecI low_bytes = i_set(0x00FF00FF);
      for (int j = part * kQuads; j < (part + 1) * kQuads; ++j) {
        // Widen lane l's codes at inputs 4j + (0, 2) and 4j + (1, 3) to int16 pairs.
        const VecI w = code_register<Bits>(codes, j);
        const VecI even = i_and(w, low_bytes);
        const VecI odd = i_srli16<8>(w);
        for (int i = 0; i < Rows; ++i) {
          const auto* xq = reinterpret_cast<const int32_t*>(a.x + i * a.in + g * kGroup + 4 * j);
          dot[i] = i_dot_pairs(dot[i], even, i_set(xq[0]));
          dot[i] = i_dot_pairs(dot[i], odd, i_set(xq[1]));
        }
      }
      for (int i = 0; i < Rows; ++i) {
        const int64_t r = i * a.groups + g;
        // sum_k (d c_k + m) s x_k = d s (c . x) + m (s sum_k x_k)
        const VecF ds = f_mul(d, f_set(a.x_scale[r]));
        acc[i] = f_fmadd(f_from_i32(dot[i]), ds, acc[i]);
        acc[i] = f_fmadd(m, f_set(a.x_sum[r * kParts + part]), acc[i]);
      }
    }
  }
  for (int i = 0; i < Rows; ++i) f_store(a.y + i * a.out, acc[i]);
}

// A block of `rows` activation rows (1 .. kMaxRows), each count compiled with its own registers.
template <int Bits, Scales S, int R = 1>
void run_block(int64_t rows, const TileArgs& a) {
  if constexpr (R == kMaxRows) {
    tile_block<Bits, R, S>(a);
  } else {
    rows == R ? tile_block<Bits, R, S>(a) : run_block<Bits, S, R + 1>(rows, a);
  }
}

template <Scales S>
void run_block(int64_t bits, int64_t rows, const TileArgs& a) {
  if (bits == 8) return run_block<8, S>(rows, a);
  if (bits == 6) return run_block<6, S>(rows, a);
  run_block<4, S>(rows, a);
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
                  (codes.size(2) == 256 || codes.size(2) == 384 || codes.size(2) == 512),
              "codes must be [tiles, groups, 256, 384 or 512] uint8 (4-, 6- or 8-bit)");
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
        for (int64_t lane0 = 0; lane0 < kTile; lane0 += kLanes) {
          const TileArgs a{codes_p + t * groups * bits * 64, scale_p + t * tile_scales,
                           min_p + t * tile_mins, q.codes.data() + r0 * in,
                           q.scale.data() + r0 * groups, x_sum + r0 * groups * parts,
                           y_p + r0 * out + t * kTile + lane0, groups, in, out, lane0};
          const int64_t n = std::min<int64_t>(kMaxRows, rows - r0);
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
    }
  });
  return y.view(shape).to(input.scalar_type());
}

}  // namespace

TORCH_LIBRARY(preheat, m) {
  m.def("quant_matmul(Tensor x, Tensor codes, Tensor scale, Tensor min) -> Tensor", &quant_matmul);
}
