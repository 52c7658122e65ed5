// The CPU kernels' scoring of a chunk of keys against one target, shared by
// both ops (topk_attention reads the keys in place, any 16/32-bit float dtype;
// topk_attention_embedding from its float buffer of gathered rows): one call's
// keys all take the same arithmetic, so both ops give a key the same score.
#pragma once

#include <algorithm>
#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "isa.h"

namespace dare {
namespace cpu {

template <typename scalar_t>
__attribute__((always_inline)) inline float dot(const float* q, const scalar_t* x, int64_t d) {
  float s = 0.f;
  for (int64_t i = 0; i < d; ++i) s += q[i] * static_cast<float>(x[i]);
  return s;
}

// A key's score is a function of the query and that key alone, bit for bit:
// every key of a row takes the same arithmetic (one sequential sum here; the
// AVX2 path below handles a row's last n % 8 keys with its 8-key block code),
// so identical keys tie and are ordered by position, and a position's score
// does not depend on `lengths`, the chunking or the targets grouped with it.
template <typename scalar_t>
inline void score_chunk_scalar(const float* q, const scalar_t* x, int64_t stride, int64_t n, int64_t d,
                               float scale, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = dot(q, x + i * stride, d) * scale;
}

#ifdef DARE_X86
template <typename scalar_t>
DARE_AVX2 inline __m256 load8(const scalar_t* p);
template <>
DARE_AVX2 inline __m256 load8<float>(const float* p) { return _mm256_loadu_ps(p); }
template <>
DARE_AVX2 inline __m256 load8<c10::Half>(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
template <>
DARE_AVX2 inline __m256 load8<c10::BFloat16>(const c10::BFloat16* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

// Horizontal sums of eight vectors, as one vector: [sum(a[0]), ..., sum(a[7])].
DARE_AVX2 inline __m256 hsum8(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// The tail dims (d % 8) of one key: fused multiply-adds in order.
template <typename scalar_t>
DARE_AVX2 inline float dot_fma(const float* q, const scalar_t* x, int64_t d) {
  float s = 0.f;
  for (int64_t i = 0; i < d; ++i) s = __builtin_fmaf(q[i], static_cast<float>(x[i]), s);
  return s;
}

// Scores of eight keys into out[0..8), key r at key(r), one accumulator each,
// so a key's dot product needs no horizontal reduction of its own. Every key
// takes the same arithmetic whatever its slot: its score does not depend on its
// position.
template <typename scalar_t, typename Key>
DARE_AVX2 __attribute__((always_inline)) inline void score8(const float* q, Key key, int64_t d, __m256 vscale,
                                                            float* out) {
  const int64_t dv = d & ~int64_t(7);
  __m256 acc[8];
#pragma GCC unroll 8
  for (int r = 0; r < 8; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t c = 0; c < dv; c += 8) {
    const __m256 qv = _mm256_loadu_ps(q + c);
#pragma GCC unroll 8
    for (int r = 0; r < 8; ++r) acc[r] = _mm256_fmadd_ps(qv, load8<scalar_t>(key(r) + c), acc[r]);
  }
  __m256 sum = hsum8(acc);
  if (dv < d) {
    alignas(32) float tail[8];
    for (int r = 0; r < 8; ++r) tail[r] = dot_fma(q + dv, key(r) + dv, d - dv);
    sum = _mm256_add_ps(sum, _mm256_load_ps(tail));
  }
  _mm256_storeu_ps(out, _mm256_mul_ps(sum, vscale));
}

// A chunk's last n < 8 keys, from x: the block code with the missing slots
// repeating the last key (their scores land in out's slack). Out of line: it
// runs at most once a row, and a second inline copy of the block code cost
// 5-10% at d = 16.
template <typename scalar_t>
DARE_AVX2 __attribute__((noinline)) void score_tail_avx2(const float* q, const scalar_t* x, int64_t stride,
                                                         int64_t n, int64_t d, __m256 vscale, float* out) {
  score8<scalar_t>(q, [&](int r) { return x + std::min<int64_t>(r, n - 1) * stride; }, d, vscale, out);
}

// n keys from x, eight at a time; the last n % 8 take the same block code
// (out holds n rounded up to 8), not a scalar tail: every key's score is the
// same sum.
template <typename scalar_t>
DARE_AVX2 inline void score_chunk_avx2(const float* q, const scalar_t* x, int64_t stride, int64_t n, int64_t d,
                                       float scale, float* out) {
  const __m256 vscale = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    score8<scalar_t>(q, [&](int r) { return x + (i + r) * stride; }, d, vscale, out + i);
  if (i < n) score_tail_avx2(q, x + i * stride, stride, n - i, d, vscale, out + i);
}
#endif

// The scores of n keys (key i at x + i * stride) against query q, times scale,
// into out (n rounded up to 8 slots): the AVX2 code or the portable one, as the
// caller's entry point was picked (isa.h).
template <bool kAvx2, typename scalar_t>
__attribute__((always_inline)) inline void score_chunk(const float* q, const scalar_t* x, int64_t stride, int64_t n,
                                                       int64_t d, float scale, float* out) {
#ifdef DARE_X86
  if constexpr (kAvx2) {
    score_chunk_avx2(q, x, stride, n, d, scale, out);
    return;
  }
#endif
  score_chunk_scalar(q, x, stride, n, d, scale, out);
}

}  // namespace cpu
}  // namespace dare
