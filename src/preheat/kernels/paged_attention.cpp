// Attention read straight from the paged KV cache. First decode (one query token per
// sequence, below); then prefill (a chunk of one sequence's prompt tokens, further down).
//
// The cache is [blocks, block_size, kv_heads, head_dim] for K and for V, float32, float16
// or bfloat16; a sequence's token t lives in block block_tables[b][t / block_size] at row
// t % block_size. Gathering those blocks into a dense tensor first (the PyTorch path)
// copies the whole context once per layer and step; here each K and V row is read once,
// where it lies, converted to float32 in registers, and everything is computed in float32.
//
// Work items are (sequence, partition of kPartition tokens, KV head), spread over the
// threads even for a single sequence. An item reads its KV head's rows in token order, once
// for the scores and once for the values, and each loaded row serves the query heads that
// share it (GQA; up to kMaxChunk at a time, whose accumulators stay in registers). An
// item computes, per query head, a partial softmax: m = max score, l = sum exp(score - m),
// acc = sum exp(score - m) v. The partials of a sequence are then merged in partition
// order. Partitions have a fixed size, and nothing in an item depends on the batch or
// the thread count, so a sequence's output is bitwise the same alone, in any batch, and
// on any number of threads (the engine's batch and cache invariance rests on this).
//
// A sliding window (window > 0) limits query position p to keys p - window < t <= p, as
// Gemma's local layers and Mistral's attend; 0 attends the whole context.
//
// Scores are kept in base 2 (q is pre-multiplied by scale * log2(e)), so the softmax's
// exponentials are exp2, computed with a polynomial (within 1 ulp of float32's exact 2^x).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

namespace {

constexpr int64_t kPartition = 256;  // tokens per work item: a constant, for invariance
constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kDimStep = 16;     // head_dim is a multiple of this (of every ISA's kLanes)
constexpr int kMaxChunk = 4;  // query heads per pass over a KV head's rows, at most
constexpr float kLog2e = 1.4426950408889634f;

// The instruction set, chosen by the build flags (paged_attention.py): a register of kLanes
// floats, AVX-512's 16 or AVX2's 8. Everything below is written over these few operations;
// the register budgets that differ (AVX-512 has 32 registers, AVX2 16) are named where used.
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
using Vec = __m512;
using VecI = __m512i;
using Mask = __mmask16;
inline Vec v_zero() { return _mm512_setzero_ps(); }
inline Vec v_set(float x) { return _mm512_set1_ps(x); }
inline Vec v_load(const float* p) { return _mm512_loadu_ps(p); }
inline void v_store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec v_add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline Vec v_sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
inline Vec v_mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
inline Vec v_max(Vec a, Vec b) { return _mm512_max_ps(a, b); }
inline Vec v_fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline float v_hmax(Vec v) { return _mm512_reduce_max_ps(v); }
inline float v_hsum(Vec v) { return _mm512_reduce_add_ps(v); }
inline VecI vi_load(const int32_t* p) { return _mm512_load_si512(p); }

// kLanes cache elements as float32.
inline Vec load_lanes(const float* p) { return _mm512_loadu_ps(p); }
inline Vec load_lanes(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline Vec load_lanes(const c10::BFloat16* p) {  // bfloat16 is float32's upper half
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

inline Mask first_lanes(int64_t n) {
  return n >= kLanes ? static_cast<Mask>(0xFFFF) : static_cast<Mask>((1u << n) - 1);
}
inline Mask no_lanes() { return 0; }
inline Vec v_load_first(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }  // others 0
inline void v_store_first(float* p, Mask m, Vec v) { _mm512_mask_storeu_ps(p, m, v); }
inline Vec v_select(Mask m, Vec set, Vec unset) { return _mm512_mask_blend_ps(m, unset, set); }
// Lanes r with lo[r] <= key <= pos[r].
inline Mask key_visible(VecI pos, VecI lo, int32_t key) {
  const VecI k = _mm512_set1_epi32(key);
  return _mm512_mask_cmple_epi32_mask(_mm512_cmpge_epi32_mask(pos, k), lo, k);
}

// 2^x within 1 ulp (0.85 measured over [-126, 0]). 2^x = 2^n 2^f with f in [-0.5, 0.5]; 2^f
// is the degree-7 Taylor series of e^(f ln 2), whose truncation error (< 1e-8) is below float32's.
inline Vec exp2_fraction(Vec f);
inline Vec exp2_ps(Vec x) {
  // Far below 2^-149 the result is 0 anyway; the clamp keeps -inf from making inf - inf.
  // NaN passes through: max_ps returns its second operand when either is NaN.
  x = _mm512_max_ps(_mm512_set1_ps(-200.f), x);
  const Vec n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_scalef_ps(exp2_fraction(_mm512_sub_ps(x, n)), n);
}

// r[j] = the sum of v[j]'s 16 lanes, for j = 0..15: a transposing tree of 15 adds, where
// one horizontal sum per vector would cost four shuffles each.
inline Vec reduce_lanes(const Vec* v) {
  __m512 halves[8], quarters[4];
  for (int i = 0; i < 8; ++i) {  // 128-bit lanes (0, 1) hold v[2i]'s 8 partial sums, (2, 3) v[2i + 1]'s
    halves[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                              _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  }
  for (int i = 0; i < 4; ++i) {  // 128-bit lane k holds v[4i + k]'s 4 partial sums
    quarters[i] = _mm512_add_ps(_mm512_shuffle_f32x4(halves[2 * i], halves[2 * i + 1], 0x88),
                                _mm512_shuffle_f32x4(halves[2 * i], halves[2 * i + 1], 0xDD));
  }
  const __m512 lo = _mm512_add_ps(_mm512_unpacklo_ps(quarters[0], quarters[1]),
                                  _mm512_unpackhi_ps(quarters[0], quarters[1]));
  const __m512 hi = _mm512_add_ps(_mm512_unpacklo_ps(quarters[2], quarters[3]),
                                  _mm512_unpackhi_ps(quarters[2], quarters[3]));
  // Element 4k + m now holds the sum of v[4m + k]; put it at position 4m + k.
  const __m512 sums = _mm512_add_ps(_mm512_shuffle_ps(lo, hi, _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, sums);
}

constexpr int kKeys = 16;  // prefill: key tokens per step, one score register each
constexpr int kDims = 8;   // prefill: output dims accumulated at once, independent FMA chains
#else
constexpr int64_t kLanes = 8;
using Vec = __m256;
using VecI = __m256i;
using Mask = __m256i;  // all ones in a lane that is set
inline Vec v_zero() { return _mm256_setzero_ps(); }
inline Vec v_set(float x) { return _mm256_set1_ps(x); }
inline Vec v_load(const float* p) { return _mm256_loadu_ps(p); }
inline void v_store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec v_add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline Vec v_sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
inline Vec v_mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
inline Vec v_max(Vec a, Vec b) { return _mm256_max_ps(a, b); }
inline Vec v_fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline float v_hmax(Vec v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}
inline float v_hsum(Vec v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline VecI vi_load(const int32_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }

inline Vec load_lanes(const float* p) { return _mm256_loadu_ps(p); }
inline Vec load_lanes(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline Vec load_lanes(const c10::BFloat16* p) {  // bfloat16 is float32's upper half
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

inline Mask first_lanes(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(std::min(n, kLanes))),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline Mask no_lanes() { return _mm256_setzero_si256(); }
inline Vec v_load_first(Mask m, const float* p) { return _mm256_maskload_ps(p, m); }  // others 0
inline void v_store_first(float* p, Mask m, Vec v) { _mm256_maskstore_ps(p, m, v); }
inline Vec v_select(Mask m, Vec set, Vec unset) { return _mm256_blendv_ps(unset, set, _mm256_castsi256_ps(m)); }
inline Mask key_visible(VecI pos, VecI lo, int32_t key) {
  const VecI k = _mm256_set1_epi32(key);
  const VecI hidden = _mm256_or_si256(_mm256_cmpgt_epi32(k, pos), _mm256_cmpgt_epi32(lo, k));
  return _mm256_andnot_si256(hidden, _mm256_set1_epi32(-1));
}

// 2^x as above, with 2^n formed in the exponent bits: exact for n >= -126; below 2^-126 the
// result is 0 (AVX-512's is a denormal there, which no softmax weight notices).
inline Vec exp2_fraction(Vec f);
inline Vec exp2_ps(Vec x) {
  const Vec nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  const Vec live = _mm256_cmp_ps(x, _mm256_set1_ps(-126.f), _CMP_GE_OQ);
  const Vec y = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-126.f)), _mm256_set1_ps(127.f));
  const Vec n = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const Vec r = _mm256_and_ps(_mm256_mul_ps(exp2_fraction(_mm256_sub_ps(y, n)), _mm256_castsi256_ps(bits)), live);
  return _mm256_blendv_ps(r, x, nan);  // NaN passes through
}

// r[j] = the sum of v[j]'s 8 lanes, for j = 0..7: two rounds of pairwise adds, then the
// 128-bit halves.
inline Vec reduce_lanes(const Vec* v) {
  const Vec ab = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const Vec cd = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  // ab holds v[0..3]'s sums of lanes 0-3, then of lanes 4-7; cd v[4..7]'s.
  return _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31));
}

constexpr int kKeys = 8;   // prefill: 16 registers hold 8 score and 4 accumulator registers
constexpr int kDims = 4;
#endif

inline Vec exp2_fraction(Vec f) {
  Vec p = v_set(1.525273380405984e-05f);
  p = v_fmadd(p, f, v_set(1.5403530393381608e-04f));
  p = v_fmadd(p, f, v_set(1.3333558146428443e-03f));
  p = v_fmadd(p, f, v_set(9.6181291076284772e-03f));
  p = v_fmadd(p, f, v_set(5.5504108664821580e-02f));
  p = v_fmadd(p, f, v_set(2.4022650695910071e-01f));
  p = v_fmadd(p, f, v_set(6.9314718055994531e-01f));
  return v_fmadd(p, f, v_set(1.f));
}

template <typename T>
struct Problem {
  const float* q;           // [batch, heads, head_dim], times scale * log2(e)
  const T* k;               // [blocks, block_size, kv_heads, head_dim]
  const T* v;
  const int64_t* tables;    // [batch, max_blocks]
  int64_t max_blocks, block_size, heads, kv_heads, head_dim;
};

// Calls visit(i, head) for tokens t0 + i < t1 of sequence b, head = KV head h's head_dim
// elements of the token's row in `cache`. Walks block by block (no division per token)
// and prefetches the same row of the next block: blocks lie anywhere in the cache, and a
// head's rows are strided, so the hardware prefetchers alone leave the loads waiting.
template <typename T, typename Visit>
inline void for_each_row(const Problem<T>& pb, const T* cache, int64_t b, int64_t t0, int64_t t1, int64_t h,
                         Visit visit) {
  const int64_t row = pb.kv_heads * pb.head_dim, bs = pb.block_size;
  const int64_t* table = pb.tables + b * pb.max_blocks;
  const int64_t last_block = (t1 - 1) / bs;
  const int64_t lines = (pb.head_dim * static_cast<int64_t>(sizeof(T)) + 63) / 64;
  for (int64_t t = t0; t < t1;) {
    const int64_t blk = t / bs, off = t % bs;
    const int64_t n = std::min(bs - off, t1 - t);
    const T* base = cache + (table[blk] * bs + off) * row + h * pb.head_dim;
    const char* next = blk < last_block
        ? reinterpret_cast<const char*>(cache + (table[blk + 1] * bs + off) * row + h * pb.head_dim) : nullptr;
    for (int64_t i = 0; i < n; ++i) {
      if (next != nullptr) {
        for (int64_t l = 0; l < lines; ++l) _mm_prefetch(next + i * row * sizeof(T) + 64 * l, _MM_HINT_T0);
      }
      visit(t - t0 + i, base + i * row);
    }
    t += n;
  }
}

// Base-2 scores of GC query heads (hq0 ...) that share KV head h, over tokens [t0, t1) of
// sequence b: scores[g * kPartition + i] for token t0 + i.
template <typename T, int NV, int GC>
void head_scores(const Problem<T>& pb, int64_t b, int64_t t0, int64_t t1, int64_t h, int64_t hq0,
                 float* scores) {
  const int64_t nv = NV ? NV : pb.head_dim / kLanes, n = t1 - t0;
  const float* q = pb.q + (b * pb.heads + hq0) * pb.head_dim;
  Vec partial[GC][kLanes];  // kLanes tokens' products, summed kLanes at a time by reduce_lanes
  for (auto& head : partial) std::fill_n(head, kLanes, v_zero());
  for_each_row(pb, pb.k, b, t0, t1, h, [&](int64_t i, const T* head) {
    Vec kr[NV ? NV : kMaxHeadDim / kLanes];
    for (int64_t j = 0; j < nv; ++j) kr[j] = load_lanes(head + j * kLanes);
    for (int g = 0; g < GC; ++g) {
      const float* qg = q + g * pb.head_dim;
      Vec s = v_mul(v_load(qg), kr[0]);
      for (int64_t j = 1; j < nv; ++j) s = v_fmadd(v_load(qg + j * kLanes), kr[j], s);
      partial[g][i % kLanes] = s;
    }
    if (i % kLanes == kLanes - 1 || i == n - 1) {
      const int64_t i0 = i - i % kLanes;
      for (int g = 0; g < GC; ++g) {
        v_store_first(scores + g * kPartition + i0, first_lanes(i - i0 + 1), reduce_lanes(partial[g]));
      }
    }
  });
}

// In place: p = 2^(s - m) for n scores; returns (m, l = sum p).
inline std::pair<float, float> softmax_partition(float* s, int64_t n) {
  Vec vmax = v_set(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < n; i += kLanes) {
    const Mask m = first_lanes(n - i);
    vmax = v_select(m, v_max(vmax, v_load_first(m, s + i)), vmax);
  }
  const float mx = v_hmax(vmax);
  Vec vsum = v_zero();
  for (int64_t i = 0; i < n; i += kLanes) {
    const Mask m = first_lanes(n - i);
    const Vec p = exp2_ps(v_sub(v_load_first(m, s + i), v_set(mx)));
    v_store_first(s + i, m, p);
    vsum = v_select(m, v_add(vsum, p), vsum);
  }
  return {mx, v_hsum(vsum)};
}

// acc[g] = sum_i p[g][i] v_i over the partition for GC query heads sharing KV head h,
// kept in registers (when NV is fixed) across the whole partition.
template <typename T, int NV, int GC>
void head_values(const Problem<T>& pb, int64_t b, int64_t t0, int64_t t1, int64_t h, const float* probs,
                 float* part) {
  const int64_t nv = NV ? NV : pb.head_dim / kLanes;
  Vec acc[GC][NV ? NV : kMaxHeadDim / kLanes];
  for (auto& head : acc) std::fill_n(head, nv, v_zero());
  for_each_row(pb, pb.v, b, t0, t1, h, [&](int64_t i, const T* head) {
    Vec vr[NV ? NV : kMaxHeadDim / kLanes];
    for (int64_t j = 0; j < nv; ++j) vr[j] = load_lanes(head + j * kLanes);
    for (int g = 0; g < GC; ++g) {
      const Vec p = v_set(probs[g * kPartition + i]);
      for (int64_t j = 0; j < nv; ++j) acc[g][j] = v_fmadd(p, vr[j], acc[g][j]);
    }
  });
  for (int g = 0; g < GC; ++g) {
    for (int64_t j = 0; j < nv; ++j) v_store(part + g * (pb.head_dim + 2) + 2 + j * kLanes, acc[g][j]);
  }
}

// The partials (m, l, acc) of GC query heads hq0 ... that share KV head h into
// part[g * (head_dim + 2)]; `scores` is scratch of GC * kPartition floats.
template <typename T, int NV, int GC>
void attend_heads(const Problem<T>& pb, int64_t b, int64_t t0, int64_t t1, int64_t h, int64_t hq0,
                  float* scores, float* part) {
  head_scores<T, NV, GC>(pb, b, t0, t1, h, hq0, scores);
  for (int g = 0; g < GC; ++g) {
    const auto [mx, total] = softmax_partition(scores + g * kPartition, t1 - t0);
    part[g * (pb.head_dim + 2)] = mx;
    part[g * (pb.head_dim + 2) + 1] = total;
  }
  head_values<T, NV, GC>(pb, b, t0, t1, h, scores, part);
}

// attend_heads for gc <= GC query heads (GC is a register budget; the rest run as smaller chunks).
template <typename T, int NV, int GC>
void attend_chunk(const Problem<T>& pb, int64_t b, int64_t t0, int64_t t1, int64_t h, int64_t hq0,
                  int64_t gc, float* scores, float* part) {
  if constexpr (GC > 1) {
    if (gc < GC) return attend_chunk<T, NV, GC - 1>(pb, b, t0, t1, h, hq0, gc, scores, part);
  }
  attend_heads<T, NV, GC>(pb, b, t0, t1, h, hq0, scores, part);
}

// One work item: KV head h of sequence b over tokens [t0, t1). Writes the partials (m, l,
// acc[head_dim]) of h's query heads to part ([groups, head_dim + 2]). h's rows are read once
// per chunk of up to MaxGC of its query heads: once for SmolLM2's groups of 3 at head_dim 64,
// twice for Llama 3 8B's groups of 4 at head_dim 128 (the second time from L2).
// NV is head_dim / kLanes when fixed at compile time (registers), or 0 for any multiple of 16.
template <typename T, int NV, int MaxGC>
void attend_partition(const Problem<T>& pb, int64_t b, int64_t t0, int64_t t1, int64_t h, float* scores,
                      float* part) {
  const int64_t groups = pb.heads / pb.kv_heads;
  for (int64_t g0 = 0; g0 < groups; g0 += MaxGC) {
    attend_chunk<T, NV, MaxGC>(pb, b, t0, t1, h, h * groups + g0, std::min<int64_t>(MaxGC, groups - g0),
                               scores, part + g0 * (pb.head_dim + 2));
  }
}

// out[hq] = sum_p 2^(m_p - M) acc_p / sum_p 2^(m_p - M) l_p over a sequence's partitions, in order.
void merge(const float* parts, int64_t num_parts, int64_t heads, int64_t dim, float* out) {
  const int64_t stride = heads * (dim + 2);
  for (int64_t hq = 0; hq < heads; ++hq) {
    const float* first = parts + hq * (dim + 2);
    float mx = first[0];
    for (int64_t p = 1; p < num_parts; ++p) mx = std::max(mx, first[p * stride]);
    float total = 0.f;
    float* o = out + hq * dim;
    std::fill_n(o, dim, 0.f);
    for (int64_t p = 0; p < num_parts; ++p) {
      const float* part = first + p * stride;
      const float w = std::exp2(part[0] - mx);
      total += w * part[1];
      for (int64_t d = 0; d < dim; ++d) o[d] += w * part[2 + d];
    }
    const float inv = 1.f / total;
    for (int64_t d = 0; d < dim; ++d) o[d] *= inv;
  }
}

template <typename T>
using AttendFn = void (*)(const Problem<T>&, int64_t, int64_t, int64_t, int64_t, float*, float*);

// Head dims 64 and 128 get registers: MaxGC * NV accumulators and NV row registers fit in
// AVX-512's 32; AVX2's 16 hold one query head's at head_dim 64.
template <typename T>
AttendFn<T> pick_attend(int64_t dim) {
  static_assert(kMaxChunk >= 4, "the scratch must hold attend_partition<T, 4, 4>'s scores");
  if constexpr (kLanes == 16) {
    if (dim == 64) return attend_partition<T, 4, 4>;
    if (dim == 128) return attend_partition<T, 8, 2>;
  } else {
    if (dim == 64) return attend_partition<T, 8, 1>;
  }
  return attend_partition<T, 0, 1>;
}

template <typename T>
void run(const Problem<T>& pb, const std::vector<int64_t>& lens, int64_t window, float* out) {
  const int64_t batch = static_cast<int64_t>(lens.size()), dim = pb.head_dim;
  // Partitions in sequence order: sequence b owns partitions first[b] .. first[b + 1] - 1.
  // A window's partitions start at its first key: what a sequence computes depends on its
  // own length only, as without one.
  std::vector<int64_t> first(batch + 1, 0), part_seq, part_start;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = window > 0 ? std::max<int64_t>(0, lens[b] - window) : 0; t < lens[b]; t += kPartition) {
      part_seq.push_back(b);
      part_start.push_back(t);
    }
    first[b + 1] = static_cast<int64_t>(part_seq.size());
  }
  const int64_t part_size = pb.heads * (dim + 2), group_size = part_size / pb.kv_heads;
  // Every float of a partial is written before it is read: no zeroing.
  std::unique_ptr<float[]> parts(new float[part_seq.size() * part_size]);
  const auto attend = pick_attend<T>(dim);
  // Items (partition, KV head) ordered by the partition's place in its sequence, then the
  // KV head, then the sequence: sequences that share a prefix (one document, many
  // questions; a sequence's draft rows) read the same blocks in consecutive items, so a
  // thread reads them from memory once and from its caches for the rest. The order changes
  // which item runs when, never what an item computes.
  std::vector<std::pair<int64_t, int64_t>> order;  // (partition, KV head)
  order.reserve(part_seq.size() * pb.kv_heads);
  for (int64_t i = 0; static_cast<int64_t>(order.size()) < static_cast<int64_t>(part_seq.size()) * pb.kv_heads; ++i) {
    for (int64_t h = 0; h < pb.kv_heads; ++h) {
      for (int64_t b = 0; b < batch; ++b) {
        if (first[b] + i < first[b + 1]) order.emplace_back(first[b] + i, h);
      }
    }
  }
  const int64_t items = static_cast<int64_t>(order.size());
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(kMaxChunk * kPartition);
    for (int64_t it = begin; it < end; ++it) {
      const auto [p, h] = order[it];
      const int64_t b = part_seq[p], t0 = part_start[p];
      attend(pb, b, t0, std::min(t0 + kPartition, lens[b]), h, scores.data(),
             parts.get() + p * part_size + h * group_size);
    }
  });
  // Serial: about 1% of the work, and a second parallel region costs a wake-up of every thread.
  for (int64_t b = 0; b < batch; ++b) {
    merge(parts.get() + first[b] * part_size, first[b + 1] - first[b], pb.heads, dim, out + b * pb.heads * dim);
  }
}

std::vector<int64_t> checked_lengths(const at::Tensor& context_lens, int64_t batch, int64_t capacity) {
  TORCH_CHECK(context_lens.dim() == 1 && context_lens.size(0) == batch,
              "context_lens must be [batch] (", batch, "), got ", context_lens.sizes());
  TORCH_CHECK(context_lens.scalar_type() == at::kLong || context_lens.scalar_type() == at::kInt,
              "context_lens must be int64 or int32");
  const at::Tensor lens = context_lens.to(at::kLong).contiguous();
  std::vector<int64_t> out(lens.data_ptr<int64_t>(), lens.data_ptr<int64_t>() + batch);
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(out[b] >= 1 && out[b] <= capacity, "context_lens[", b, "] = ", out[b],
                " is outside 1..", capacity, " (the block table's capacity)");
  }
  return out;
}

void check_tables(const at::Tensor& tables, const std::vector<int64_t>& lens, int64_t block_size,
                  int64_t num_blocks) {
  const int64_t* p = tables.data_ptr<int64_t>();
  for (size_t b = 0; b < lens.size(); ++b) {
    for (int64_t i = 0; i < (lens[b] + block_size - 1) / block_size; ++i) {
      const int64_t block = p[b * tables.size(1) + i];
      TORCH_CHECK(block >= 0 && block < num_blocks, "block_tables[", b, "][", i, "] = ", block,
                  " is not a block of the cache (", num_blocks, ")");
    }
  }
}

// What both ops ask of q ([rows, heads, head_dim] float32) and the caches.
void check_query_and_caches(const char* op, const char* rows, const at::Tensor& query, const at::Tensor& k_cache,
                            const at::Tensor& v_cache) {
  for (const at::Tensor* t : {&query, &k_cache, &v_cache}) {
    TORCH_CHECK(t->device().is_cpu(), op, " runs on CPU tensors only");
  }
  TORCH_CHECK(query.dim() == 3 && query.scalar_type() == at::kFloat, "q must be [", rows, ", heads, head_dim] float32");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes() &&
                  k_cache.scalar_type() == v_cache.scalar_type(),
              "k_cache and v_cache must both be [blocks, block_size, kv_heads, head_dim] of one dtype");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "the caches must be contiguous");
  const auto dtype = k_cache.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "the cache must be float32, float16 or bfloat16, not ", dtype);
  const int64_t heads = query.size(1), dim = query.size(2), kv_heads = k_cache.size(2);
  TORCH_CHECK(k_cache.size(3) == dim, "the cache's head_dim is ", k_cache.size(3), ", q's ", dim);
  TORCH_CHECK(dim % kDimStep == 0 && dim > 0 && dim <= kMaxHeadDim,
              "head_dim must be a multiple of 16 up to 256, got ", dim);
  TORCH_CHECK(kv_heads > 0 && heads % kv_heads == 0, "q's ", heads, " heads must be a multiple of the cache's ",
              kv_heads, " KV heads");
  TORCH_CHECK(k_cache.size(1) > 0, "the cache's block size must be positive");
}

// fn(T{}) for the cache's element type T.
template <typename Fn>
void with_cache_type(at::ScalarType dtype, Fn fn) {
  if (dtype == at::kFloat) fn(float{});
  else if (dtype == at::kHalf) fn(c10::Half{});
  else fn(c10::BFloat16{});
}

// q [batch, heads, head_dim] float32; k_cache, v_cache [blocks, block_size, kv_heads, head_dim]
// float32, float16 or bfloat16; block_tables [batch, max_blocks] and context_lens [batch]
// int64 or int32. Returns softmax(scale q k^T) v over each sequence's context (its last
// `window` tokens when window > 0): [batch, heads, head_dim].
at::Tensor paged_decode_attention(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& block_tables, const at::Tensor& context_lens, double scale,
                                  int64_t window) {
  TORCH_CHECK(window >= 0, "window must be 0 (none) or positive, got ", window);
  for (const at::Tensor* t : {&block_tables, &context_lens}) {
    TORCH_CHECK(t->device().is_cpu(), "paged_decode_attention runs on CPU tensors only");
  }
  check_query_and_caches("paged_decode_attention", "batch", query, k_cache, v_cache);
  const int64_t batch = query.size(0), heads = query.size(1), dim = query.size(2);
  const int64_t num_blocks = k_cache.size(0), block_size = k_cache.size(1), kv_heads = k_cache.size(2);
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.size(0) == batch,
              "block_tables must be [batch (", batch, "), max_blocks], got ", block_tables.sizes());
  TORCH_CHECK(block_tables.scalar_type() == at::kLong || block_tables.scalar_type() == at::kInt,
              "block_tables must be int64 or int32");
  const at::Tensor tables = block_tables.to(at::kLong).contiguous();
  const std::vector<int64_t> lens = checked_lengths(context_lens, batch, tables.size(1) * block_size);
  check_tables(tables, lens, block_size, num_blocks);

  // Base-2 scores: 2^(log2(e) x) = e^x, so the softmax needs only exp2.
  const at::Tensor q_in = query.contiguous();
  std::vector<float> q(q_in.data_ptr<float>(), q_in.data_ptr<float>() + q_in.numel());
  const float q_scale = static_cast<float>(scale * kLog2e);
  for (float& x : q) x *= q_scale;
  at::Tensor out = at::empty({batch, heads, dim}, query.options());
  if (batch == 0) return out;
  auto go = [&](auto tag) {
    using T = decltype(tag);
    const Problem<T> pb{q.data(), static_cast<const T*>(k_cache.data_ptr()),
                        static_cast<const T*>(v_cache.data_ptr()), tables.data_ptr<int64_t>(),
                        tables.size(1), block_size, heads, kv_heads, dim};
    run(pb, lens, window, out.data_ptr<float>());
  };
  with_cache_type(k_cache.scalar_type(), go);
  return out;
}


// ---- prefill: many query tokens of one sequence, causal --------------------------------
//
// A prompt chunk's n tokens attend over everything cached before them and, causally, over
// each other; the chunk's own k and v are already in the cache. Query rows are pairs
// (token i, query head of KV head h), and kLanes of them fill a register's lanes, so a work
// item is (KV head, kLanes rows). With rows in lanes every step is vertical: key token t's
// scores are one register, sum_d k[t][d] * qT[d] (a broadcast key element times the rows'
// q); the online softmax's max, sum and rescale are elementwise; the output accumulates as
// oT[d] += sum_t p[t] * v[t][d]. No transposes or horizontal sums in the loop.
//
// Keys and values are converted to float32 once per call, a span of tokens at a time
// (every head's, in parallel), and then every item reads that span from the contiguous
// copy: converting per item cost as much as the arithmetic. The items' softmax state lives
// between spans, so the copy stays within kSpanBytes at any context length: small enough
// to stay in a core's L2 while every item reads it (8 MiB spans took 1.4x as long on a
// 512-token chunk after 3584 cached tokens here), large enough that the two parallel
// regions a span costs stay small beside its arithmetic.

constexpr int kRows = kLanes;  // query rows per item: one per lane
constexpr int64_t kSpanBytes = 1 << 20;  // a span's float32 keys and values: stays in L2

template <typename T>
struct PrefillProblem {
  const T* k;              // [blocks, block_size, kv_heads, head_dim]
  const T* v;
  const int64_t* table;    // the sequence's blocks
  int64_t n, context, block_size, heads, kv_heads, head_dim, window;
};

// One item's rows and running softmax: qT and oT are [head_dim][kRows]; row r sees keys
// lo[r] .. pos[r].
struct PrefillItem {
  int64_t h = 0, row0 = 0, valid = 0;
  std::vector<float> qt, ot;
  alignas(64) int32_t pos[kRows];
  alignas(64) int32_t lo[kRows];
  alignas(64) float m[kRows];
  alignas(64) float l[kRows];

  int64_t begin() const { return lo[0]; }  // rows are in token order
  int64_t end() const { return pos[kRows - 1] + 1; }
};

// Item `it`'s rows (token-major: row = i * groups + g of KV head h) from q scaled to base 2.
template <typename T>
void init_item(const PrefillProblem<T>& pb, const float* q, float q_scale, int64_t h, int64_t row0,
               PrefillItem& item) {
  const int64_t dim = pb.head_dim, groups = pb.heads / pb.kv_heads;
  item.h = h;
  item.row0 = row0;
  item.valid = std::min<int64_t>(kRows, pb.n * groups - row0);
  item.qt.assign(dim * kRows, 0.f);
  item.ot.assign(dim * kRows, 0.f);
  for (int64_t r = 0; r < kRows; ++r) {
    const int64_t row = row0 + std::min(r, item.valid - 1);  // spare lanes repeat the last row
    const int64_t i = row / groups, hq = h * groups + row % groups;
    item.pos[r] = static_cast<int32_t>(pb.context - pb.n + i);
    item.lo[r] = pb.window > 0 ? std::max<int32_t>(0, item.pos[r] - static_cast<int32_t>(pb.window) + 1) : 0;
    // Finite: under a window a row may see no key of a whole step, and -inf - -inf is NaN.
    // The first visible key's exp2(-FLT_MAX - s) is 0 all the same.
    item.m[r] = -std::numeric_limits<float>::max();
    item.l[r] = 0.f;
    const float* qr = q + (i * pb.heads + hq) * dim;
    for (int64_t d = 0; d < dim; ++d) item.qt[d * kRows + r] = qr[d] * q_scale;
  }
}

// Keys and values of tokens [s0, s1) as float32: keys[h][t - s0][d], values likewise;
// `span` rows per head.
template <typename T>
void convert_span(const PrefillProblem<T>& pb, int64_t s0, int64_t s1, int64_t span, float* keys,
                  float* values) {
  const int64_t dim = pb.head_dim, row = pb.kv_heads * dim;
  at::parallel_for(0, s1 - s0, 64, [&](int64_t begin, int64_t stop) {
    for (int64_t j = begin; j < stop; ++j) {
      const int64_t t = s0 + j, at = (pb.table[t / pb.block_size] * pb.block_size + t % pb.block_size) * row;
      for (int64_t h = 0; h < pb.kv_heads; ++h) {
        const int64_t to = (h * span + j) * dim, from = at + h * dim;
        for (int64_t d = 0; d < dim; d += kLanes) {
          v_store(keys + to + d, load_lanes(pb.k + from + d));
          v_store(values + to + d, load_lanes(pb.v + from + d));
        }
      }
    }
  });
}

// Keys [t0, t0 + c) of the span (rows of `keys` and `values`, float32) into item's state.
// DIM is head_dim when fixed at compile time (0: any): then every key row sits at a
// constant offset from one pointer, where sixteen pointers spilled registers into the loop.
template <int DIM>
void prefill_step(PrefillItem& item, int64_t head_dim, int64_t t0, int64_t c, const float* keys,
                  const float* values) {
  const int64_t dim = DIM ? DIM : head_dim;
  const Vec neg_inf = v_set(-std::numeric_limits<float>::infinity());
  const VecI vpos = vi_load(item.pos);
  const VecI vlo = vi_load(item.lo);
  Vec s[kKeys];
  for (auto& x : s) x = v_zero();
  const float* qt = item.qt.data();
  for (int64_t d = 0; d < dim; ++d) {
    const Vec qd = v_load(qt + d * kRows);
    const float* k = keys + d;
#pragma GCC unroll 16
    for (int j = 0; j < kKeys; ++j) s[j] = v_fmadd(v_set(k[j * dim]), qd, s[j]);
  }
  // Row r sees key t0 + j when j < c and lo[r] <= t0 + j <= pos[r]: branch-free, so the
  // scores stay in registers.
  const Vec m_old = v_load(item.m);
  Vec top = m_old;
#pragma GCC unroll 16
  for (int j = 0; j < kKeys; ++j) {
    s[j] = v_select(j < c ? key_visible(vpos, vlo, static_cast<int32_t>(t0 + j)) : no_lanes(), s[j], neg_inf);
    top = v_max(top, s[j]);
  }
  const Vec alpha = exp2_ps(v_sub(m_old, top));
  Vec l = v_mul(v_load(item.l), alpha);
#pragma GCC unroll 16
  for (int j = 0; j < kKeys; ++j) {
    s[j] = exp2_ps(v_sub(s[j], top));
    l = v_add(l, s[j]);
  }
  v_store(item.m, top);
  v_store(item.l, l);
  float* ot = item.ot.data();
  for (int64_t d0 = 0; d0 < dim; d0 += kDims) {
    Vec acc[kDims];
    const float* v = values + d0;
#pragma GCC unroll 8
    for (int e = 0; e < kDims; ++e) acc[e] = v_mul(v_load(ot + (d0 + e) * kRows), alpha);
#pragma GCC unroll 16
    for (int j = 0; j < kKeys; ++j) {
#pragma GCC unroll 8
      for (int e = 0; e < kDims; ++e) acc[e] = v_fmadd(s[j], v_set(v[j * dim + e]), acc[e]);
    }
#pragma GCC unroll 8
    for (int e = 0; e < kDims; ++e) v_store(ot + (d0 + e) * kRows, acc[e]);
  }
}

// The item's keys within span [s0, s1), kKeys at a time. Rows past the span's end in the
// copy hold zeros or an earlier span's finite values: masked to probability 0.
template <int DIM>
void prefill_span(PrefillItem& item, int64_t dim, int64_t s0, int64_t s1, int64_t span, const float* keys,
                  const float* values) {
  const int64_t stop = std::min(s1, item.end());
  // Keys before the window's start are skipped a whole step at a time.
  const int64_t start = s0 + std::max<int64_t>(0, item.begin() - s0) / kKeys * kKeys;
  for (int64_t t0 = start; t0 < stop; t0 += kKeys) {
    const int64_t at = (item.h * span + (t0 - s0)) * dim;
    prefill_step<DIM>(item, dim, t0, std::min<int64_t>(kKeys, stop - t0), keys + at, values + at);
  }
}

using SpanFn = void (*)(PrefillItem&, int64_t, int64_t, int64_t, int64_t, const float*, const float*);

SpanFn pick_span(int64_t dim) {
  if (dim == 64) return prefill_span<64>;
  if (dim == 128) return prefill_span<128>;
  return prefill_span<0>;
}

template <typename T>
void write_item(const PrefillProblem<T>& pb, const PrefillItem& item, float* out) {
  const int64_t dim = pb.head_dim, groups = pb.heads / pb.kv_heads;
  for (int64_t r = 0; r < item.valid; ++r) {
    const int64_t row = item.row0 + r, i = row / groups, hq = item.h * groups + row % groups;
    const float inv = 1.f / item.l[r];
    float* o = out + (i * pb.heads + hq) * dim;
    for (int64_t d = 0; d < dim; ++d) o[d] = item.ot[d * kRows + r] * inv;
  }
}

// Runs fn(item) for every item, thread t taking items t, t + threads, ...: items come
// longest first, so each thread gets an even share of the long and the short ones (a
// causal chunk's last rows see the most keys, and contiguous halves of the items left one
// thread with three quarters of a 512-token chunk's work).
template <typename Fn>
void for_each_item(std::vector<PrefillItem>& items, Fn fn) {
  const int64_t count = static_cast<int64_t>(items.size());
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), count);
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t stop) {
    for (int64_t t = begin; t < stop; ++t) {
      for (int64_t it = t; it < count; it += threads) fn(items[it]);
    }
  });
}

template <typename T>
void run_prefill(const PrefillProblem<T>& pb, const float* q, float q_scale, float* out) {
  const int64_t dim = pb.head_dim, per_head = (pb.n * (pb.heads / pb.kv_heads) + kRows - 1) / kRows;
  // Items: the longest first (later rows see more keys), a head's next to each other.
  std::vector<PrefillItem> items(pb.kv_heads * per_head);
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t stop) {
    for (int64_t it = begin; it < stop; ++it) {
      init_item(pb, q, q_scale, it % pb.kv_heads, (per_head - 1 - it / pb.kv_heads) * kRows, items[it]);
    }
  });
  // A whole number of steps, and the step past the context fits too (it reads, masked).
  const int64_t most = kSpanBytes / (2 * pb.kv_heads * dim * static_cast<int64_t>(sizeof(float)));
  const int64_t span = std::min(std::max<int64_t>(most / kKeys, 1), (pb.context + kKeys - 1) / kKeys) * kKeys;
  const SpanFn attend = pick_span(dim);
  // Zeroed once: a short last span leaves finite rows (zeros or older keys) past its end.
  std::vector<float> keys(pb.kv_heads * span * dim, 0.f), values(pb.kv_heads * span * dim, 0.f);
  const int64_t first_key = pb.window > 0 ? std::max<int64_t>(0, pb.context - pb.n - pb.window + 1) : 0;
  for (int64_t s0 = first_key / span * span; s0 < pb.context; s0 += span) {
    const int64_t s1 = std::min(s0 + span, pb.context);
    convert_span(pb, s0, s1, span, keys.data(), values.data());
    for_each_item(items, [&](PrefillItem& item) { attend(item, dim, s0, s1, span, keys.data(), values.data()); });
  }
  for (const PrefillItem& item : items) write_item(pb, item, out);
}

// q [n, heads, head_dim] float32: the chunk's queries, at positions context - n .. context - 1;
// k_cache, v_cache as for decode, already holding the chunk's own keys and values;
// block_table [blocks] int64 or int32. Returns causal softmax(scale q k^T) v (within `window`
// keys when window > 0): [n, heads, head_dim].
at::Tensor paged_prefill_attention(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                   const at::Tensor& block_table, int64_t context, double scale, int64_t window) {
  TORCH_CHECK(window >= 0, "window must be 0 (none) or positive, got ", window);
  TORCH_CHECK(block_table.device().is_cpu(), "paged_prefill_attention runs on CPU tensors only");
  check_query_and_caches("paged_prefill_attention", "n", query, k_cache, v_cache);
  static_assert(kLanes % kDims == 0, "a head_dim of whole registers is whole groups of kDims");
  const int64_t n = query.size(0), heads = query.size(1), dim = query.size(2);
  const int64_t num_blocks = k_cache.size(0), block_size = k_cache.size(1), kv_heads = k_cache.size(2);
  TORCH_CHECK(block_table.dim() == 1, "block_table must be [blocks]");
  const at::Tensor table = block_table.to(at::kLong).contiguous();
  TORCH_CHECK(context >= n && n >= 0 && context <= table.size(0) * block_size,
              "context ", context, " must cover the chunk's ", n, " tokens and fit the table's ",
              table.size(0) * block_size);
  check_tables(table.view({1, -1}), {context}, block_size, num_blocks);

  const at::Tensor q = query.contiguous();
  at::Tensor out = at::empty({n, heads, dim}, query.options());
  if (n == 0) return out;
  // Base-2 scores: 2^(log2(e) x) = e^x, so the softmax needs only exp2.
  const float q_scale = static_cast<float>(scale * kLog2e);
  auto go = [&](auto tag) {
    using T = decltype(tag);
    const PrefillProblem<T> pb{static_cast<const T*>(k_cache.data_ptr()), static_cast<const T*>(v_cache.data_ptr()),
                               table.data_ptr<int64_t>(), n, context, block_size, heads, kv_heads, dim, window};
    run_prefill(pb, q.data_ptr<float>(), q_scale, out.data_ptr<float>());
  };
  with_cache_type(k_cache.scalar_type(), go);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(preheat, m) {
  m.def("paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
        "Tensor context_lens, float scale, int window=0) -> Tensor",
        &paged_decode_attention);
  m.def("paged_prefill_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, "
        "int context, float scale, int window=0) -> Tensor",
        &paged_prefill_attention);
}
