// y = x Wᵀ for a weight stored as kept values (row-major) + a little-endian packed bitmask, for
// float32, bfloat16 and float16 values; inputs and outputs in the values' dtype, accumulation in float32.
//
// Decode and small batches are bound by reading the weight, so `bitmask_matmul` reads only the kept
// values and the mask and spreads the values to their columns in registers:
//   - AVX-512 (F, BW, VBMI2): `vexpandps` / `vpexpandw` load the values of 16 / 32 columns under their
//     mask bits in one instruction; bfloat16 dot products use AVX512-BF16 `vdpbf16ps` where present;
//   - AVX2 (+F16C, FMA): 8 values loaded, widened to float32, spread by a permute from a 256-entry table;
//   - elsewhere a portable scalar loop.
// The path is fixed at compile time (the build is per machine, -march=native; `isa()` says which).
// Longer inputs (prefill) are compute-bound: `bitmask_decompress_into` writes the dense weight into a
// buffer the caller reuses for every layer (no allocation, no page faults, cache-warm), for one GEMM.
// Quantized weights (`bitmask_matmul_q`): int8 codes, or int4 codes packed two per byte, with a float32
// scale per row and group of input columns; each group's code dot product is scaled once (decode reads
// one byte, or half a byte, per kept weight). int4 rows are unpacked to int8 in a per-thread buffer.
// Values must be padded with 32 elements so the last unaligned vector load stays in bounds.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VBMI2__)
#include <immintrin.h>
#define PRUNELLM_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define PRUNELLM_AVX2 1
#endif

namespace {

using BF16 = c10::BFloat16;
using F16 = c10::Half;

constexpr int64_t kMaxBatch = 8;  // input rows whose accumulators stay in registers per pass over a row

// Columns the padded input rows have: whole mask bytes, rounded up to 32 so vector loads stay in bounds.
inline int64_t padded_cols(int64_t bytes) { return (8 * bytes + 31) / 32 * 32; }

// The (up to) 32 mask bits of bytes c..c+3, little-endian; bytes past the row end read as zero.
inline uint32_t mask_bits(const uint8_t* mask, int64_t c, int64_t bytes) {
  uint32_t m = 0;
  if (c + 4 <= bytes)
    std::memcpy(&m, mask + c, 4);  // one unaligned load
  else
    std::memcpy(&m, mask + c, static_cast<size_t>(bytes - c));
  return m;
}

inline float to_float(float v) { return v; }
inline float to_float(BF16 v) { return static_cast<float>(v); }
inline float to_float(F16 v) { return static_cast<float>(v); }
inline float to_float(int8_t v) { return static_cast<float>(v); }

// ---------------------------------------------------------------------------------------------------
#if defined(PRUNELLM_AVX512)
inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

// Decode streams the values and the mask once: fetching them 2 KiB / 512 B ahead measured ~20% faster
// than leaving it to the hardware prefetcher (two interleaved streams of irregular step).
inline void prefetch(const void* v, const uint8_t* mask) {
  _mm_prefetch(static_cast<const char*>(v) + 2048, _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(mask) + 512, _MM_HINT_T0);
}

// 32 columns of one weight row as two float32 vectors, from the values selected by mask m.
template <typename T>
inline void expand32(const T*& v, uint32_t m, __m512& lo, __m512& hi);

template <>
inline void expand32<float>(const float*& v, uint32_t m, __m512& lo, __m512& hi) {
  const __mmask16 m0 = static_cast<__mmask16>(m), m1 = static_cast<__mmask16>(m >> 16);
  lo = _mm512_maskz_expand_ps(m0, _mm512_loadu_ps(v));
  v += __builtin_popcount(m0);
  hi = _mm512_maskz_expand_ps(m1, _mm512_loadu_ps(v));
  v += __builtin_popcount(m1);
}

inline __m512i expand32_epi16(const void* v, uint32_t m) { return _mm512_maskz_expand_epi16(m, _mm512_loadu_si512(v)); }

// 16-bit values: widen the next 16 stored values to float32, then spread them with the 32-bit expand
// (measured 2× faster on Zen 4 than expanding the 16-bit lanes with vpexpandw and widening after).
inline __m512 widen16(const BF16* v) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
inline __m512 widen16(const F16* v) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v))); }
inline __m512 widen16(const int8_t* v) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v))));
}

template <typename T>
inline void expand32_widened(const T*& v, uint32_t m, __m512& lo, __m512& hi) {
  const __mmask16 m0 = static_cast<__mmask16>(m), m1 = static_cast<__mmask16>(m >> 16);
  lo = _mm512_maskz_expand_ps(m0, widen16(v));
  v += __builtin_popcount(m0);
  hi = _mm512_maskz_expand_ps(m1, widen16(v));
  v += __builtin_popcount(m1);
}
template <>
inline void expand32<BF16>(const BF16*& v, uint32_t m, __m512& lo, __m512& hi) { expand32_widened(v, m, lo, hi); }
template <>
inline void expand32<F16>(const F16*& v, uint32_t m, __m512& lo, __m512& hi) { expand32_widened(v, m, lo, hi); }
template <>
inline void expand32<int8_t>(const int8_t*& v, uint32_t m, __m512& lo, __m512& hi) { expand32_widened(v, m, lo, hi); }

// One weight row against NB input rows (float32, padded to `xs` columns), 32 columns per step.
template <typename T, int NB>
inline void row_dot(const T* v, const uint8_t* mask, int64_t bytes, const float* x, int64_t xs, float* out) {
  __m512 acc[2][NB];
  for (int b = 0; b < NB; ++b) acc[0][b] = acc[1][b] = _mm512_setzero_ps();
  for (int64_t c = 0; c < bytes; c += 4) {
    prefetch(v, mask + c);
    const uint32_t m = mask_bits(mask, c, bytes);
    __m512 lo, hi;
    expand32<T>(v, m, lo, hi);
    for (int b = 0; b < NB; ++b) {
      const float* xb = x + b * xs + 8 * c;
      acc[0][b] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xb), acc[0][b]);
      acc[1][b] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + 16), acc[1][b]);
    }
  }
  for (int b = 0; b < NB; ++b) out[b] = hsum(_mm512_add_ps(acc[0][b], acc[1][b]));
}

#if defined(__AVX512BF16__)
// bfloat16 weights against bfloat16 inputs: 32 products per instruction, summed in float32 pairs.
template <int NB>
inline void row_dot_bf16(const BF16* v, const uint8_t* mask, int64_t bytes, const BF16* x, int64_t xs, float* out) {
  __m512 acc[2][NB];
  for (int b = 0; b < NB; ++b) acc[0][b] = acc[1][b] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= bytes; c += 8) {  // two independent 32-column steps hide the dot-product latency
    prefetch(v, mask + c);
    const uint32_t m0 = mask_bits(mask, c, bytes), m1 = mask_bits(mask, c + 4, bytes);
    const __m512i w0 = expand32_epi16(v, m0);
    v += __builtin_popcount(m0);
    const __m512i w1 = expand32_epi16(v, m1);
    v += __builtin_popcount(m1);
    for (int b = 0; b < NB; ++b) {
      const BF16* xb = x + b * xs + 8 * c;
      acc[0][b] = _mm512_dpbf16_ps(acc[0][b], (__m512bh)w0, (__m512bh)_mm512_loadu_si512(xb));
      acc[1][b] = _mm512_dpbf16_ps(acc[1][b], (__m512bh)w1, (__m512bh)_mm512_loadu_si512(xb + 32));
    }
  }
  for (; c < bytes; c += 4) {
    const uint32_t m = mask_bits(mask, c, bytes);
    const __m512i w = expand32_epi16(v, m);
    v += __builtin_popcount(m);
    for (int b = 0; b < NB; ++b)
      acc[0][b] = _mm512_dpbf16_ps(acc[0][b], (__m512bh)w, (__m512bh)_mm512_loadu_si512(x + b * xs + 8 * c));
  }
  for (int b = 0; b < NB; ++b) out[b] = hsum(_mm512_add_ps(acc[0][b], acc[1][b]));
}
#endif

// Decompress one row into `w` (padded_cols wide, zeros where pruned).
template <typename T>
inline void expand_row(const T* v, const uint8_t* mask, int64_t bytes, T* w) {
  for (int64_t c = 0; c < bytes; c += 4) {
    const uint32_t m = mask_bits(mask, c, bytes);
    if constexpr (std::is_same_v<T, float>) {
      const __mmask16 m0 = static_cast<__mmask16>(m), m1 = static_cast<__mmask16>(m >> 16);
      _mm512_storeu_ps(w + 8 * c, _mm512_maskz_expand_ps(m0, _mm512_loadu_ps(v)));
      v += __builtin_popcount(m0);
      _mm512_storeu_ps(w + 8 * c + 16, _mm512_maskz_expand_ps(m1, _mm512_loadu_ps(v)));
      v += __builtin_popcount(m1);
    } else {
      _mm512_storeu_si512(w + 8 * c, expand32_epi16(v, m));
      v += __builtin_popcount(m);
    }
  }
}

// Decompress one row widened to float32 (for GEMMs in float32 on float16 weights).
template <typename T>
inline void expand_row_f32(const T* v, const uint8_t* mask, int64_t bytes, float* w) {
  for (int64_t c = 0; c < bytes; c += 4) {
    __m512 lo, hi;
    expand32<T>(v, mask_bits(mask, c, bytes), lo, hi);
    _mm512_storeu_ps(w + 8 * c, lo);
    _mm512_storeu_ps(w + 8 * c + 16, hi);
  }
}

constexpr const char* kIsa =
#if defined(__AVX512BF16__)
    "avx512+bf16";
#else
    "avx512";
#endif

// ---------------------------------------------------------------------------------------------------
#elif defined(PRUNELLM_AVX2)
// For each mask byte, the source lane of every output lane: its rank among the set bits, with the
// sign bit set on lanes whose bit is clear, so one blendv zeroes them (8 KiB, stays in L1).
struct ExpandTable {
  alignas(64) int32_t index[256][8];
  ExpandTable() {
    for (int m = 0; m < 256; ++m) {
      int k = 0;
      for (int j = 0; j < 8; ++j) index[m][j] = ((m >> j) & 1) ? k++ : int32_t(0x80000000u);
    }
  }
};
const ExpandTable kTable;

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

inline __m256 load8(const float* v) { return _mm256_loadu_ps(v); }
inline __m256 load8(const BF16* v) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(v));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}
inline __m256 load8(const F16* v) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v))); }
inline __m256 load8(const int8_t* v) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(v))));
}

// The 8 values selected by mask byte m, widened to float32 and spread to their columns.
template <typename T>
inline __m256 expand8(const T* v, unsigned m) {
  const __m256i index = _mm256_load_si256(reinterpret_cast<const __m256i*>(kTable.index[m]));
  const __m256 vals = _mm256_permutevar8x32_ps(load8(v), index);
  return _mm256_blendv_ps(vals, _mm256_setzero_ps(), _mm256_castsi256_ps(index));
}

// One row of W against NB input rows. S accumulator sets per input row hide the FMA latency for small NB.
template <typename T, int NB>
inline void row_dot(const T* v, const uint8_t* mask, int64_t bytes, const float* x, int64_t xs, float* out) {
  constexpr int S = NB == 1 ? 4 : (NB == 2 ? 2 : 1);
  __m256 acc[S][NB];
  for (int s = 0; s < S; ++s)
    for (int b = 0; b < NB; ++b) acc[s][b] = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + S <= bytes; c += S) {
#pragma GCC unroll 4
    for (int k = 0; k < S; ++k) {
      const unsigned m = mask[c + k];
      const __m256 vals = expand8(v, m);
      v += __builtin_popcount(m);
      for (int b = 0; b < NB; ++b)
        acc[k][b] = _mm256_fmadd_ps(vals, _mm256_loadu_ps(x + 8 * (c + k) + b * xs), acc[k][b]);
    }
  }
  for (; c < bytes; ++c) {
    const unsigned m = mask[c];
    const __m256 vals = expand8(v, m);
    v += __builtin_popcount(m);
    for (int b = 0; b < NB; ++b) acc[0][b] = _mm256_fmadd_ps(vals, _mm256_loadu_ps(x + 8 * c + b * xs), acc[0][b]);
  }
  for (int b = 0; b < NB; ++b) {
    __m256 total = acc[0][b];
    for (int s = 1; s < S; ++s) total = _mm256_add_ps(total, acc[s][b]);
    out[b] = hsum(total);
  }
}

template <typename T>
inline void expand_row(const T* v, const uint8_t* mask, int64_t bytes, T* w) {
  for (int64_t c = 0; c < bytes; ++c) {
    const unsigned m = mask[c];
    if constexpr (std::is_same_v<T, float>) {
      _mm256_storeu_ps(w + 8 * c, expand8(v, m));
      v += __builtin_popcount(m);
    } else {
      for (int j = 0; j < 8; ++j) w[8 * c + j] = ((m >> j) & 1) ? *v++ : T(0.f);
    }
  }
}

template <typename T>
inline void expand_row_f32(const T* v, const uint8_t* mask, int64_t bytes, float* w) {
  for (int64_t c = 0; c < bytes; ++c) {
    _mm256_storeu_ps(w + 8 * c, expand8(v, mask[c]));
    v += __builtin_popcount(mask[c]);
  }
}

constexpr const char* kIsa = "avx2";

// ---------------------------------------------------------------------------------------------------
#else
template <typename T, int NB>
inline void row_dot(const T* v, const uint8_t* mask, int64_t bytes, const float* x, int64_t xs, float* out) {
  float acc[NB] = {0};
  for (int64_t c = 0; c < bytes; ++c) {
    for (unsigned m = mask[c]; m; m &= m - 1) {
      const int j = __builtin_ctz(m);
      const float w = to_float(*v++);
      for (int b = 0; b < NB; ++b) acc[b] += w * x[b * xs + 8 * c + j];
    }
  }
  for (int b = 0; b < NB; ++b) out[b] = acc[b];
}

template <typename T>
inline void expand_row(const T* v, const uint8_t* mask, int64_t bytes, T* w) {
  for (int64_t c = 0; c < bytes; ++c)
    for (int j = 0; j < 8; ++j) w[8 * c + j] = ((mask[c] >> j) & 1) ? *v++ : T(0.f);
}

template <typename T>
inline void expand_row_f32(const T* v, const uint8_t* mask, int64_t bytes, float* w) {
  for (int64_t c = 0; c < bytes; ++c)
    for (int j = 0; j < 8; ++j) w[8 * c + j] = ((mask[c] >> j) & 1) ? to_float(*v++) : 0.f;
}

constexpr const char* kIsa = "portable";
#endif
// ---------------------------------------------------------------------------------------------------

template <typename T>
inline void row_dot_n(int64_t nb, const T* v, const uint8_t* mask, int64_t bytes, const float* x, int64_t xs,
                      float* out) {
  switch (nb) {
    case 1: return row_dot<T, 1>(v, mask, bytes, x, xs, out);
    case 2: return row_dot<T, 2>(v, mask, bytes, x, xs, out);
    case 3: return row_dot<T, 3>(v, mask, bytes, x, xs, out);
    case 4: return row_dot<T, 4>(v, mask, bytes, x, xs, out);
    case 5: return row_dot<T, 5>(v, mask, bytes, x, xs, out);
    case 6: return row_dot<T, 6>(v, mask, bytes, x, xs, out);
    case 7: return row_dot<T, 7>(v, mask, bytes, x, xs, out);
    default: return row_dot<T, 8>(v, mask, bytes, x, xs, out);
  }
}

#if defined(PRUNELLM_AVX512) && defined(__AVX512BF16__)
inline void row_dot_bf16_n(int64_t nb, const BF16* v, const uint8_t* mask, int64_t bytes, const BF16* x, int64_t xs,
                           float* out) {
  switch (nb) {
    case 1: return row_dot_bf16<1>(v, mask, bytes, x, xs, out);
    case 2: return row_dot_bf16<2>(v, mask, bytes, x, xs, out);
    case 3: return row_dot_bf16<3>(v, mask, bytes, x, xs, out);
    case 4: return row_dot_bf16<4>(v, mask, bytes, x, xs, out);
    case 5: return row_dot_bf16<5>(v, mask, bytes, x, xs, out);
    case 6: return row_dot_bf16<6>(v, mask, bytes, x, xs, out);
    case 7: return row_dot_bf16<7>(v, mask, bytes, x, xs, out);
    default: return row_dot_bf16<8>(v, mask, bytes, x, xs, out);
  }
}
#endif

void check(const torch::Tensor& values, const torch::Tensor& bitmask, const torch::Tensor& row_offsets) {
  const auto dtype = values.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat32 || dtype == torch::kBFloat16 || dtype == torch::kFloat16,
              "values must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(bitmask.scalar_type() == torch::kUInt8 && row_offsets.scalar_type() == torch::kInt64, "bad index types");
  TORCH_CHECK(values.is_contiguous() && bitmask.is_contiguous() && row_offsets.is_contiguous(), "not contiguous");
  TORCH_CHECK(bitmask.dim() == 2 && row_offsets.size(0) == bitmask.size(0), "bitmask / row_offsets shapes");
  TORCH_CHECK(values.device().is_cpu() && bitmask.device().is_cpu(), "CPU tensors only");
}

// The input rows as X (float32, or bfloat16 for the dot-product path), zero-padded to `padded_cols`
// columns: x itself when it already is exactly that (no copy), else a per-thread buffer (no allocation
// through torch: decode calls this ~200 times per token).
template <typename X, typename T>
const X* padded_inputs(const torch::Tensor& x, int64_t bytes, int64_t& stride) {
  const int64_t batch = x.size(0), cols = x.size(1), width = padded_cols(bytes);
  TORCH_CHECK((cols + 7) / 8 == bytes, "x has ", cols, " columns, the bitmask ", bytes, " bytes per row");
  stride = width;
  if (std::is_same_v<X, T> && cols == width && x.is_contiguous()) return reinterpret_cast<const X*>(x.data_ptr());
  thread_local std::vector<X> buffer;
  buffer.assign(static_cast<size_t>(batch * width), X(0.f));
  const T* xp = reinterpret_cast<const T*>(x.data_ptr());
  const int64_t s0 = x.stride(0), s1 = x.stride(1);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t c = 0; c < cols; ++c) buffer[b * width + c] = static_cast<X>(to_float(xp[b * s0 + c * s1]));
  return buffer.data();
}

// Store one weight row's results for nb input rows into y (batch × rows, the output dtype).
template <typename T>
inline void store(const float* out, int64_t nb, int64_t r, int64_t b0, int64_t rows, T* y) {
  for (int64_t b = 0; b < nb; ++b) y[(b0 + b) * rows + r] = static_cast<T>(out[b]);
}

// Every weight row against the input rows, kMaxBatch at a time, rows split over threads; `dot(nb, r, x, out)`
// computes weight row r against nb input rows starting at x.
template <typename T, typename X, typename Dot>
void over_rows(int64_t rows, int64_t batch, const X* x, int64_t xs, T* y, Dot dot) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    float out[kMaxBatch];
    for (int64_t r = begin; r < end; ++r)
      for (int64_t b0 = 0; b0 < batch; b0 += kMaxBatch) {
        const int64_t nb = std::min(kMaxBatch, batch - b0);
        dot(nb, r, x + b0 * xs, out);
        store(out, nb, r, b0, rows, y);
      }
  });
}

template <typename T>
void matmul_rows(const torch::Tensor& values, const torch::Tensor& bitmask, const torch::Tensor& row_offsets,
                 const torch::Tensor& x, torch::Tensor& y) {
  const int64_t rows = bitmask.size(0), bytes = bitmask.size(1), batch = x.size(0);
  const T* vp = reinterpret_cast<const T*>(values.data_ptr());
  const uint8_t* mp = bitmask.data_ptr<uint8_t>();
  const int64_t* op = row_offsets.data_ptr<int64_t>();
  T* yp = reinterpret_cast<T*>(y.data_ptr());
  int64_t xs = 0;
#if defined(PRUNELLM_AVX512) && defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, BF16>) {
    const BF16* xptr = padded_inputs<BF16, T>(x, bytes, xs);
    over_rows(rows, batch, xptr, xs, yp, [&](int64_t nb, int64_t r, const BF16* xb, float* out) {
      row_dot_bf16_n(nb, vp + op[r], mp + r * bytes, bytes, xb, xs, out);
    });
    return;
  }
#endif
  const float* xptr = padded_inputs<float, T>(x, bytes, xs);
  over_rows(rows, batch, xptr, xs, yp, [&](int64_t nb, int64_t r, const float* xb, float* out) {
    row_dot_n<T>(nb, vp + op[r], mp + r * bytes, bytes, xb, xs, out);
  });
}

template <typename T>
void decompress_rows(const T* vp, const uint8_t* mp, const int64_t* op, int64_t bytes, int64_t r0, int64_t r1,
                     T* out, int64_t ld) {
  for (int64_t r = r0; r < r1; ++r) expand_row<T>(vp + op[r], mp + r * bytes, bytes, out + (r - r0) * ld);
}

template <typename T>
T* typed(const torch::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

// Call f(T{}) with T the C++ type of a float32 / bfloat16 / float16 tensor (check() admits no other).
template <typename F>
void dispatch(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case torch::kFloat32: f(float{}); break;
    case torch::kBFloat16: f(BF16{}); break;
    default: f(F16{}); break;
  }
}

// ---------------------------------------------------------------------------------------------------
// Quantized weights: codes (int8, or int4 packed two per byte, low nibble first) with one float32 scale
// per row and group of `group_cols` input columns (a multiple of 32, or the whole row).

inline int64_t popcount_bytes(const uint8_t* mask, int64_t n) {
  int64_t count = 0, c = 0;
  for (; c + 8 <= n; c += 8) {
    uint64_t word;
    std::memcpy(&word, mask + c, 8);
    count += __builtin_popcountll(word);
  }
  for (; c < n; ++c) count += __builtin_popcount(mask[c]);
  return count;
}

// The int8 codes of one row: the stored ones for int8, or the row's int4 codes (value index `first`
// onwards, `count` of them) unpacked into a per-thread buffer, padded for the vector loads.
inline const int8_t* row_codes(const uint8_t* stored, int bits, int64_t first, int64_t count) {
  if (bits == 8) return reinterpret_cast<const int8_t*>(stored) + first;
  thread_local std::vector<int8_t> buffer;
  if (static_cast<int64_t>(buffer.size()) < count + 64) buffer.resize(static_cast<size_t>(count + 64));
  int8_t* out = buffer.data();
  auto nibble = [](unsigned v) { return static_cast<int8_t>(static_cast<int>(v ^ 8u) - 8); };
  int64_t i = 0, k = first;
  if ((k & 1) && i < count) out[i++] = nibble(stored[k++ >> 1] >> 4);
  const uint8_t* bytes = stored + (k >> 1);
  for (; i + 2 <= count; i += 2, ++bytes) {
    out[i] = nibble(*bytes & 15u);
    out[i + 1] = nibble(*bytes >> 4);
  }
  if (i < count) out[i] = nibble(*bytes & 15u);
  std::memset(out + count, 0, 64);
  return out;
}

// One weight row of codes against nb input rows: each group's dot product times its scale.
inline void row_dot_q(int64_t nb, const int8_t* v, const uint8_t* mask, int64_t bytes, int64_t group_bytes,
                      const float* scales, const float* x, int64_t xs, float* out) {
  float part[kMaxBatch];
  for (int64_t b = 0; b < nb; ++b) out[b] = 0.f;
  for (int64_t c = 0, g = 0; c < bytes; c += group_bytes, ++g) {
    const int64_t n = std::min(group_bytes, bytes - c);
    row_dot_n<int8_t>(nb, v, mask + c, n, x + 8 * c, xs, part);
    for (int64_t b = 0; b < nb; ++b) out[b] += scales[g] * part[b];
    v += popcount_bytes(mask + c, n);
  }
}

struct QuantArgs {
  const uint8_t* codes;
  const uint8_t* mask;
  const int64_t* offsets;
  const float* scales;
  int64_t rows, bytes, groups, group_bytes;
  int bits;
};

QuantArgs quant_args(const torch::Tensor& codes, const torch::Tensor& bitmask, const torch::Tensor& row_offsets,
                     const torch::Tensor& scales, int64_t group_cols, int64_t bits) {
  TORCH_CHECK(bits == 8 || bits == 4, "bits must be 8 or 4");
  TORCH_CHECK(codes.scalar_type() == (bits == 8 ? torch::kInt8 : torch::kUInt8), "int8 codes, or uint8 packed int4");
  TORCH_CHECK(scales.scalar_type() == torch::kFloat32 && scales.is_contiguous(), "scales must be contiguous float32");
  TORCH_CHECK(bitmask.scalar_type() == torch::kUInt8 && row_offsets.scalar_type() == torch::kInt64, "bad index types");
  TORCH_CHECK(codes.is_contiguous() && bitmask.is_contiguous() && row_offsets.is_contiguous(), "not contiguous");
  TORCH_CHECK(bitmask.dim() == 2 && row_offsets.size(0) == bitmask.size(0), "bitmask / row_offsets shapes");
  const int64_t rows = bitmask.size(0), bytes = bitmask.size(1);
  TORCH_CHECK(group_cols > 0 && group_cols % 8 == 0, "group_cols must be a positive multiple of 8");
  const int64_t group_bytes = group_cols / 8, groups = (bytes + group_bytes - 1) / group_bytes;
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == rows && scales.size(1) == groups, "scales must be rows x ",
              groups);
  return {reinterpret_cast<const uint8_t*>(codes.data_ptr()),
          bitmask.data_ptr<uint8_t>(), row_offsets.data_ptr<int64_t>(), scales.data_ptr<float>(),
          rows, bytes, groups, group_bytes, static_cast<int>(bits)};
}

inline const int8_t* codes_of_row(const QuantArgs& q, int64_t r) {
  return row_codes(q.codes, q.bits, q.offsets[r], popcount_bytes(q.mask + r * q.bytes, q.bytes));
}

}  // namespace

// values: [nnz + 32]; bitmask: uint8 [rows, ceil(cols/8)]; row_offsets: int64 [rows]; x: [batch, cols], the
// values' dtype. Returns [batch, rows] in that dtype (float32 accumulation).
torch::Tensor bitmask_matmul(const torch::Tensor& values, const torch::Tensor& bitmask, const torch::Tensor& row_offsets,
                             const torch::Tensor& x) {
  check(values, bitmask, row_offsets);
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == values.scalar_type(), "x must be 2-D in the values' dtype");
  torch::Tensor y = torch::empty({x.size(0), bitmask.size(0)}, x.options());
  dispatch(values.scalar_type(), [&](auto tag) { matmul_rows<decltype(tag)>(values, bitmask, row_offsets, x, y); });
  return y;
}

// The dense rows × cols weight, in the values' dtype.
torch::Tensor bitmask_decompress(const torch::Tensor& values, const torch::Tensor& bitmask,
                                 const torch::Tensor& row_offsets, int64_t cols) {
  check(values, bitmask, row_offsets);
  const int64_t rows = bitmask.size(0), bytes = bitmask.size(1), width = padded_cols(bytes);
  TORCH_CHECK((cols + 7) / 8 == bytes, "cols do not match the bitmask");
  torch::Tensor padded = torch::empty({rows, width}, values.options());
  const uint8_t* mp = bitmask.data_ptr<uint8_t>();
  const int64_t* op = row_offsets.data_ptr<int64_t>();
  dispatch(values.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      decompress_rows<scalar_t>(typed<const scalar_t>(values), mp, op, bytes, begin, end,
                                typed<scalar_t>(padded) + begin * width, width);
    });
  });
  return cols == width ? padded : padded.narrow(1, 0, cols).contiguous();
}

// Decompress into `out` (rows × padded_cols, contiguous; the values' dtype or float32): a buffer the caller
// reuses across layers, so long inputs pay no allocation or page faults for the dense weight.
void bitmask_decompress_into(const torch::Tensor& values, const torch::Tensor& bitmask,
                             const torch::Tensor& row_offsets, torch::Tensor& out) {
  check(values, bitmask, row_offsets);
  const int64_t rows = bitmask.size(0), bytes = bitmask.size(1), width = padded_cols(bytes);
  TORCH_CHECK(out.is_contiguous() && out.dim() == 2 && out.size(0) == rows && out.size(1) == width,
              "out must be a contiguous ", rows, " x ", width, " tensor");
  TORCH_CHECK(out.scalar_type() == values.scalar_type() || out.scalar_type() == torch::kFloat32,
              "out must have the values' dtype or float32");
  const uint8_t* mp = bitmask.data_ptr<uint8_t>();
  const int64_t* op = row_offsets.data_ptr<int64_t>();
  const bool widen = out.scalar_type() != values.scalar_type();
  dispatch(values.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* vp = typed<const scalar_t>(values);
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        if (widen)
          expand_row_f32<scalar_t>(vp + op[r], mp + r * bytes, bytes, out.data_ptr<float>() + r * width);
        else
          expand_row<scalar_t>(vp + op[r], mp + r * bytes, bytes, typed<scalar_t>(out) + r * width);
      }
    });
  });
}

// codes: int8 [nnz + 32], or uint8 [(nnz + 1) / 2 + 32] of packed int4; scales: float32 [rows, groups];
// x: [batch, cols], float32 / bfloat16 / float16. Returns [batch, rows] in x's dtype.
torch::Tensor bitmask_matmul_q(const torch::Tensor& codes, const torch::Tensor& bitmask,
                               const torch::Tensor& row_offsets, const torch::Tensor& scales, int64_t group_cols,
                               int64_t bits, const torch::Tensor& x) {
  const QuantArgs q = quant_args(codes, bitmask, row_offsets, scales, group_cols, bits);
  const auto dtype = x.scalar_type();
  TORCH_CHECK(x.dim() == 2 && (dtype == torch::kFloat32 || dtype == torch::kBFloat16 || dtype == torch::kFloat16),
              "x must be 2-D float32, bfloat16 or float16");
  torch::Tensor y = torch::empty({x.size(0), q.rows}, x.options());
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    int64_t xs = 0;
    const float* xp = padded_inputs<float, T>(x, q.bytes, xs);
    over_rows(q.rows, x.size(0), xp, xs, typed<T>(y), [&](int64_t nb, int64_t r, const float* xb, float* out) {
      row_dot_q(nb, codes_of_row(q, r), q.mask + r * q.bytes, q.bytes, q.group_bytes, q.scales + r * q.groups,
                xb, xs, out);
    });
  });
  return y;
}

// The dequantized weight into `out` (rows × padded_cols, contiguous, float32 / bfloat16 / float16).
void bitmask_decompress_q_into(const torch::Tensor& codes, const torch::Tensor& bitmask,
                               const torch::Tensor& row_offsets, const torch::Tensor& scales, int64_t group_cols,
                               int64_t bits, torch::Tensor& out) {
  const QuantArgs q = quant_args(codes, bitmask, row_offsets, scales, group_cols, bits);
  const int64_t width = padded_cols(q.bytes);
  TORCH_CHECK(out.is_contiguous() && out.dim() == 2 && out.size(0) == q.rows && out.size(1) == width,
              "out must be a contiguous ", q.rows, " x ", width, " tensor");
  const auto dtype = out.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat32 || dtype == torch::kBFloat16 || dtype == torch::kFloat16,
              "out must be float32, bfloat16 or float16");
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* op = typed<T>(out);
    at::parallel_for(0, q.rows, 16, [&](int64_t begin, int64_t end) {
      std::vector<float> row(static_cast<size_t>(width));
      for (int64_t r = begin; r < end; ++r) {
        expand_row_f32<int8_t>(codes_of_row(q, r), q.mask + r * q.bytes, q.bytes, row.data());
        const float* s = q.scales + r * q.groups;
        const int64_t group_cols8 = 8 * q.group_bytes;
        for (int64_t g = 0; g < q.groups; ++g) {
          const int64_t c1 = std::min(width, (g + 1) * group_cols8);
          for (int64_t c = g * group_cols8; c < c1; ++c) op[r * width + c] = static_cast<T>(row[c] * s[g]);
        }
        for (int64_t c = q.groups * group_cols8; c < width; ++c) op[r * width + c] = static_cast<T>(0.f);
      }
    });
  });
}

std::string isa() { return kIsa; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bitmask_matmul", &bitmask_matmul, "x @ W.T for a bitmask-compressed W (float32/bfloat16/float16)");
  m.def("bitmask_decompress", &bitmask_decompress, "the dense weight of a bitmask-compressed W");
  m.def("bitmask_decompress_into", &bitmask_decompress_into, "decompress into a caller's padded buffer");
  m.def("bitmask_matmul_q", &bitmask_matmul_q, "x @ W.T for a bitmask-compressed W of int8 / int4 codes and scales");
  m.def("bitmask_decompress_q_into", &bitmask_decompress_q_into, "dequantize a compressed W into a padded buffer");
  m.def("isa", &isa, "the instruction set the kernels were compiled for");
}
