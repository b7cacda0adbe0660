// y = x Wᵀ for a weight stored as kept values (row-major) + a little-endian packed bitmask.
//
// Decode and small batches are bound by reading the weight, so the kernel reads only the kept
// values and the mask: each mask byte selects up to 8 of the next values, which an AVX2 permute
// (indices from a 256-entry table) spreads to their columns before a fused multiply-add with the
// inputs. Rows are split over threads with at::parallel_for. Values must be padded with 8 floats
// so the last unaligned load stays in bounds.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <array>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define PRUNELLM_AVX2 1
#endif

namespace {

constexpr int64_t kMaxBatch = 8;  // accumulators kept in registers per row pass

#ifdef PRUNELLM_AVX2
// For each mask byte, the source lane of every output lane: its rank among the set bits, with the
// sign bit set on lanes whose bit is clear, so one blendv zeroes them (8 KiB, stays in L1).
struct ExpandTable {
  alignas(64) int32_t index[256][8];
  ExpandTable() {
    for (int m = 0; m < 256; ++m) {
      int k = 0;
      for (int j = 0; j < 8; ++j) {
        index[m][j] = ((m >> j) & 1) ? k++ : int32_t(0x80000000u);
      }
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
#endif

#ifdef PRUNELLM_AVX2
// The 8 values selected by mask byte m, spread to their columns (zeros elsewhere).
inline __m256 expand8(const float* v, unsigned m) {
  const __m256i index = _mm256_load_si256(reinterpret_cast<const __m256i*>(kTable.index[m]));
  const __m256 vals = _mm256_permutevar8x32_ps(_mm256_loadu_ps(v), index);
  return _mm256_blendv_ps(vals, _mm256_setzero_ps(), _mm256_castsi256_ps(index));
}

// One row of W against NB input rows. The value pointer advances by each mask byte's popcount (a
// one-cycle add chain; the loads hang off it), and S accumulator sets per input row hide the FMA
// latency when NB is small.
template <int NB>
inline void row_dot(const float* v, const uint8_t* mask, int64_t bytes, const float* x, int64_t xs, float* out) {
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
#else
template <int NB>
inline void row_dot(const float* v, const uint8_t* mask, int64_t bytes, const float* x, int64_t xs, float* out) {
  float acc[NB] = {0};
  for (int64_t c = 0; c < bytes; ++c) {
    for (unsigned m = mask[c]; m; m &= m - 1) {
      const int j = __builtin_ctz(m);
      const float w = *v++;
      for (int b = 0; b < NB; ++b) acc[b] += w * x[b * xs + 8 * c + j];
    }
  }
  for (int b = 0; b < NB; ++b) out[b] = acc[b];
}
#endif

inline void row_dot_n(int64_t nb, const float* v, const uint8_t* mask, int64_t bytes, const float* x, int64_t xs,
                      float* out) {
  switch (nb) {
    case 1: return row_dot<1>(v, mask, bytes, x, xs, out);
    case 2: return row_dot<2>(v, mask, bytes, x, xs, out);
    case 3: return row_dot<3>(v, mask, bytes, x, xs, out);
    case 4: return row_dot<4>(v, mask, bytes, x, xs, out);
    case 5: return row_dot<5>(v, mask, bytes, x, xs, out);
    case 6: return row_dot<6>(v, mask, bytes, x, xs, out);
    case 7: return row_dot<7>(v, mask, bytes, x, xs, out);
    default: return row_dot<8>(v, mask, bytes, x, xs, out);
  }
}

}  // namespace

// values: float32 [nnz + 8]; bitmask: uint8 [rows, ceil(cols/8)]; row_offsets: int64 [rows];
// x: float32 [batch, cols]. Returns float32 [batch, rows].
torch::Tensor bitmask_matmul(const torch::Tensor& values, const torch::Tensor& bitmask, const torch::Tensor& row_offsets,
                             const torch::Tensor& x) {
  TORCH_CHECK(values.scalar_type() == torch::kFloat32 && x.scalar_type() == torch::kFloat32, "float32 only");
  TORCH_CHECK(bitmask.scalar_type() == torch::kUInt8 && row_offsets.scalar_type() == torch::kInt64, "bad index types");
  TORCH_CHECK(values.is_contiguous() && bitmask.is_contiguous() && row_offsets.is_contiguous(), "not contiguous");
  TORCH_CHECK(x.dim() == 2 && bitmask.dim() == 2, "x and bitmask must be 2-D");
  const int64_t rows = bitmask.size(0), bytes = bitmask.size(1), batch = x.size(0), cols = x.size(1);
  TORCH_CHECK((cols + 7) / 8 == bytes, "x has ", cols, " columns, the bitmask ", bytes, " bytes per row");
  TORCH_CHECK(row_offsets.size(0) == rows, "row_offsets length");
  // inputs padded to whole bytes of the mask, so every 8-wide load is in bounds
  torch::Tensor xp = x;
  if (cols != 8 * bytes || !x.is_contiguous()) {
    xp = torch::zeros({batch, 8 * bytes}, x.options());
    xp.narrow(1, 0, cols).copy_(x);
  }
  torch::Tensor y = torch::empty({rows, batch}, x.options());
  const float* vp = values.data_ptr<float>();
  const uint8_t* mp = bitmask.data_ptr<uint8_t>();
  const int64_t* op = row_offsets.data_ptr<int64_t>();
  const float* xptr = xp.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t xs = 8 * bytes;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t b0 = 0; b0 < batch; b0 += kMaxBatch) {
        const int64_t nb = std::min(kMaxBatch, batch - b0);
        row_dot_n(nb, vp + op[r], mp + r * bytes, bytes, xptr + b0 * xs, xs, yp + r * batch + b0);
      }
    }
  });
  return y.t().contiguous();
}

// The dense rows × cols weight (for long inputs, where one dense matmul beats the kernel).
torch::Tensor bitmask_decompress(const torch::Tensor& values, const torch::Tensor& bitmask,
                                 const torch::Tensor& row_offsets, int64_t cols) {
  TORCH_CHECK(values.scalar_type() == torch::kFloat32 && bitmask.scalar_type() == torch::kUInt8, "bad types");
  TORCH_CHECK(values.is_contiguous() && bitmask.is_contiguous() && row_offsets.is_contiguous(), "not contiguous");
  const int64_t rows = bitmask.size(0), bytes = bitmask.size(1);
  TORCH_CHECK((cols + 7) / 8 == bytes && row_offsets.size(0) == rows, "shapes do not match");
  torch::Tensor padded = torch::empty({rows, 8 * bytes}, values.options());
  const float* vp = values.data_ptr<float>();
  const uint8_t* mp = bitmask.data_ptr<uint8_t>();
  const int64_t* op = row_offsets.data_ptr<int64_t>();
  float* wp = padded.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* v = vp + op[r];
      float* w = wp + r * 8 * bytes;
      for (int64_t c = 0; c < bytes; ++c) {
        const unsigned m = mp[r * bytes + c];
#ifdef PRUNELLM_AVX2
        _mm256_storeu_ps(w + 8 * c, expand8(v, m));
        v += __builtin_popcount(m);
#else
        for (int j = 0; j < 8; ++j) w[8 * c + j] = ((m >> j) & 1) ? *v++ : 0.f;
#endif
      }
    }
  });
  return cols == 8 * bytes ? padded : padded.narrow(1, 0, cols).contiguous();
}

bool has_avx2() {
#ifdef PRUNELLM_AVX2
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bitmask_matmul", &bitmask_matmul, "x @ W.T for a bitmask-compressed W (float32)");
  m.def("bitmask_decompress", &bitmask_decompress, "the dense weight of a bitmask-compressed W (float32)");
  m.def("has_avx2", &has_avx2, "whether the AVX2 path was compiled");
}
