// Which way of spreading kept values to their columns decodes fastest on this CPU (AVX-512 needed)?
// One weight row at a time against one input row, 60 layers of 1536 × 576 at 70% random sparsity (more
// than the cache holds), single thread; prints µs per layer. Answered: widen 16 stored values to float32,
// then `vexpandps` (register form); for 16-bit values that beats `vpexpandw` + widening by about 2× on an
// AMD EPYC (Zen 4), bfloat16 `vdpbf16ps` on expanded 16-bit lanes is as fast, and prefetching the values
// 2 KiB ahead helps. The kernels in src/prunellm/runtime/kernels use these choices.
//
//   g++ -O3 -march=native bench/studies/kernel_variants.cpp -o /tmp/kernel_variants && /tmp/kernel_variants
#include <immintrin.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

constexpr int R = 1536, C = 576, B = C / 8, L = 60;

template <typename V>
struct Layer {
  std::vector<V> v;
  std::vector<uint8_t> m;
  std::vector<int64_t> off;
};

enum Variant { F32_LOADU_EXPAND, F32_EXPANDLOADU, F32_PREFETCH, H_EXPANDW_WIDEN, H_WIDEN_EXPAND, BF_EXPANDW_DOT };

template <Variant K, typename V>
__attribute__((noinline)) void run(const Layer<V>& l, const float* x, float* y) {
  for (int r = 0; r < R; ++r) {
    const V* v = l.v.data() + l.off[r];
    const uint8_t* mask = l.m.data() + r * B;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (int c = 0; c < B; c += 4) {
      uint32_t m;
      std::memcpy(&m, mask + c, 4);
      const __mmask16 m0 = m, m1 = m >> 16;
      __m512 lo, hi;
      if constexpr (K == F32_LOADU_EXPAND || K == F32_PREFETCH) {
        if constexpr (K == F32_PREFETCH) _mm_prefetch(reinterpret_cast<const char*>(v) + 2048, _MM_HINT_T0);
        lo = _mm512_maskz_expand_ps(m0, _mm512_loadu_ps(reinterpret_cast<const float*>(v)));
        v += __builtin_popcount(m0);
        hi = _mm512_maskz_expand_ps(m1, _mm512_loadu_ps(reinterpret_cast<const float*>(v)));
        v += __builtin_popcount(m1);
      } else if constexpr (K == F32_EXPANDLOADU) {
        lo = _mm512_maskz_expandloadu_ps(m0, v);
        v += __builtin_popcount(m0);
        hi = _mm512_maskz_expandloadu_ps(m1, v);
        v += __builtin_popcount(m1);
      } else if constexpr (K == H_EXPANDW_WIDEN) {
        const __m512i w = _mm512_maskz_expand_epi16(m, _mm512_loadu_si512(v));
        v += __builtin_popcount(m);
        lo = _mm512_cvtph_ps(_mm512_castsi512_si256(w));
        hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(w, 1));
      } else if constexpr (K == H_WIDEN_EXPAND) {
        lo = _mm512_maskz_expand_ps(m0, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v))));
        v += __builtin_popcount(m0);
        hi = _mm512_maskz_expand_ps(m1, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v))));
        v += __builtin_popcount(m1);
      } else {
        const __m512i w = _mm512_maskz_expand_epi16(m, _mm512_loadu_si512(v));
        v += __builtin_popcount(m);
        a0 = _mm512_dpbf16_ps(a0, (__m512bh)w, (__m512bh)_mm512_loadu_si512(x + 4 * c));
        continue;
      }
      a0 = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x + 8 * c), a0);
      a1 = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + 8 * c + 16), a1);
    }
    y[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
  }
}

template <typename V>
std::vector<Layer<V>> layers(V one) {
  std::mt19937 g(0);
  std::uniform_real_distribution<float> u(0, 1);
  std::vector<Layer<V>> ls(L);
  for (auto& l : ls) {
    l.m.resize(R * B);
    l.off.resize(R);
    for (int r = 0; r < R; ++r) {
      l.off[r] = static_cast<int64_t>(l.v.size());
      for (int b = 0; b < B; ++b) {
        uint8_t m = 0;
        for (int j = 0; j < 8; ++j)
          if (u(g) > 0.7f) {
            m |= 1 << j;
            l.v.push_back(one);
          }
        l.m[r * B + b] = m;
      }
    }
    l.v.resize(l.v.size() + 64);  // the last vector load reads past the end
  }
  return ls;
}

template <Variant K, typename V>
void bench(const std::vector<Layer<V>>& ls, const char* name) {
  std::vector<float> x(C, 1.f), y(R);
  for (int it = 0; it < 2; ++it)
    for (auto& l : ls) run<K>(l, x.data(), y.data());
  const auto t = std::chrono::steady_clock::now();
  for (int it = 0; it < 20; ++it)
    for (auto& l : ls) run<K>(l, x.data(), y.data());
  const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t).count() / (20 * L);
  std::printf("%-36s %7.1f us per layer\n", name, us);
}

int main() {
  const auto f32 = layers<float>(1.f);
  const auto f16 = layers<uint16_t>(0x3c00);  // 1.0 in float16 (and a normal bfloat16 bit pattern)
  bench<F32_LOADU_EXPAND>(f32, "float32: loadu + vexpandps");
  bench<F32_EXPANDLOADU>(f32, "float32: vexpandps from memory");
  bench<F32_PREFETCH>(f32, "float32: loadu + vexpandps + prefetch");
  bench<H_EXPANDW_WIDEN>(f16, "float16: vpexpandw, then widen");
  bench<H_WIDEN_EXPAND>(f16, "float16: widen 16, then vexpandps");
  bench<BF_EXPANDW_DOT>(f16, "bfloat16: vpexpandw + vdpbf16ps");
}
