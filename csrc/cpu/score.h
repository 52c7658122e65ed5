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
#include "select.h"

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

// Scores of eight keys as one vector, key r at key(r), one accumulator each,
// so a key's dot product needs no horizontal reduction of its own. Every key
// takes the same arithmetic whatever its slot: its score does not depend on its
// position. D > 0: d == D, known here (the dim loop unrolled; the same sums).
template <typename scalar_t, int D = 0, typename Key>
DARE_AVX2 __attribute__((always_inline)) inline __m256 score8v(const float* q, Key key, int64_t d, __m256 vscale) {
  if constexpr (D > 0) d = D;
  const int64_t dv = d & ~int64_t(7);
  __m256 acc[8];
#pragma GCC unroll 8
  for (int r = 0; r < 8; ++r) acc[r] = _mm256_setzero_ps();
#pragma GCC unroll 16
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
  return _mm256_mul_ps(sum, vscale);
}

// The same, into out[0..8).
template <typename scalar_t, int D = 0, typename Key>
DARE_AVX2 __attribute__((always_inline)) inline void score8(const float* q, Key key, int64_t d, __m256 vscale,
                                                            float* out) {
  _mm256_storeu_ps(out, score8v<scalar_t, D>(q, key, d, vscale));
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
template <typename scalar_t, int D = 0>
DARE_AVX2 inline void score_chunk_avx2(const float* q, const scalar_t* x, int64_t stride, int64_t n, int64_t d,
                                       float scale, float* out) {
  const __m256 vscale = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    score8<scalar_t, D>(q, [&](int r) { return x + (i + r) * stride; }, d, vscale, out + i);
  if (i < n) score_tail_avx2(q, x + i * stride, stride, n - i, d, vscale, out + i);
}
#endif

// The scores of n keys (key i at x + i * stride) against query q, times scale,
// into out (n rounded up to 8 slots): the AVX2 code or the portable one, as the
// caller's entry point was picked (isa.h).
template <bool kAvx2, int D = 0, typename scalar_t>
__attribute__((always_inline)) inline void score_chunk(const float* q, const scalar_t* x, int64_t stride, int64_t n,
                                                       int64_t d, float scale, float* out) {
#ifdef DARE_X86
  if constexpr (kAvx2) {
    score_chunk_avx2<scalar_t, D>(q, x, stride, n, d, scale, out);
    return;
  }
#endif
  score_chunk_scalar(q, x, stride, n, d, scale, out);
}

// The dim-major scan takes keys this wide or narrower (at d = 64 it was slower:
// L2-bound on a chunk's 64 rows).
constexpr int64_t kTransposeDims = 32;

#ifdef DARE_X86
// Eight bools as the low 8 bits (any nonzero byte is true).
DARE_AVX2 inline uint32_t keep_bits8(const bool* keep) {
  const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(keep));
  return ~uint32_t(_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128()))) & 0xFFu;
}

// The lane order that moves the set lanes of an 8-bit mask to the front, as
// eight byte indices (AVX2 has no compress instruction).
struct LeftPack {
  uint64_t order[256];
  constexpr LeftPack() : order() {
    for (int m = 0; m < 256; ++m) {
      int n = 0;
      for (int j = 0; j < 8; ++j)
        if (m >> j & 1) order[m] |= uint64_t(j) << (8 * n++);
    }
  }
};
inline constexpr LeftPack kLeftPack;

// score_chunk, then top.offer, for a full pool: each block of eight scores is
// tested against the threshold in its register (!(score <= t): NaN passes) and
// its passing lanes written to the pool's raw candidates with a permute, no
// branch a key. The scores are score_chunk's, bit for bit.
template <typename scalar_t, int D>
DARE_AVX2 inline void scan_full_avx2(const float* q, const scalar_t* x, int64_t stride, int64_t n, int64_t d,
                                     float scale, TopK& top, int64_t base, const bool* keep) {
  const __m256 vscale = _mm256_set1_ps(scale);
  __m256 vt = _mm256_set1_ps(top.threshold());
  float* rs = top.raw_scores();
  uint32_t* rp = top.raw_positions();
  int64_t m = 0;
  for (int64_t i = 0; i < n; i += 8) {
    __m256 v;
    uint32_t live = 0xFF;
    if (i + 8 <= n) {
      v = score8v<scalar_t, D>(q, [&](int r) { return x + (i + r) * stride; }, d, vscale);
      if (keep) live = keep_bits8(keep + i);
    } else {
      alignas(32) float s[8];
      score_tail_avx2(q, x + i * stride, stride, n - i, d, vscale, s);
      v = _mm256_load_ps(s);
      live = 0;
      for (int64_t j = 0; j < n - i; ++j) live |= uint32_t(!keep || keep[i + j]) << j;
    }
    const uint32_t bits = uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(v, vt, _CMP_NLE_UQ))) & live;
    const __m256i order =
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(&kLeftPack.order[bits])));
    _mm256_storeu_ps(rs + m, _mm256_permutevar8x32_ps(v, order));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(rp + m),
                        _mm256_add_epi32(_mm256_set1_epi32(int32_t(base + i)), order));
    m += __builtin_popcount(bits);
    if (m > TopK::raw_room()) {
      top.take_raw(m);
      m = 0;
      vt = _mm256_set1_ps(top.threshold());
    }
  }
  top.take_raw(m);
}

// A chunk of n keys (key i at x + i * stride) as float32, dim-major: key i's
// dim c at kt[c * kChunk + i], for i < m (a multiple of 8 >= n, <= kChunk);
// slots [n, m) repeat the last key. One pass a chunk, 8 x 8 blocks through
// registers, shared by every target of a work item (the AVX-512 scan reads it).
template <typename scalar_t>
DARE_AVX2 void transpose_chunk(const scalar_t* x, int64_t stride, int64_t n, int64_t d, float* kt, int64_t m) {
  constexpr int64_t ld = kChunk;
  const int64_t dv = d & ~int64_t(7);
  for (int64_t i = 0; i < m; i += 8) {
    const scalar_t* key[8];
    for (int r = 0; r < 8; ++r) key[r] = x + std::min<int64_t>(i + r, n - 1) * stride;
    for (int64_t c = 0; c < dv; c += 8) {
      __m256 a[8], b[8];
      for (int r = 0; r < 8; ++r) a[r] = load8<scalar_t>(key[r] + c);
      for (int r = 0; r < 8; r += 2) {
        b[r] = _mm256_unpacklo_ps(a[r], a[r + 1]);
        b[r + 1] = _mm256_unpackhi_ps(a[r], a[r + 1]);
      }
      for (int h = 0; h < 8; h += 4) {
        a[h] = _mm256_shuffle_ps(b[h], b[h + 2], 0x44);
        a[h + 1] = _mm256_shuffle_ps(b[h], b[h + 2], 0xEE);
        a[h + 2] = _mm256_shuffle_ps(b[h + 1], b[h + 3], 0x44);
        a[h + 3] = _mm256_shuffle_ps(b[h + 1], b[h + 3], 0xEE);
      }
      for (int r = 0; r < 4; ++r) {
        _mm256_storeu_ps(kt + (c + r) * ld + i, _mm256_permute2f128_ps(a[r], a[r + 4], 0x20));
        _mm256_storeu_ps(kt + (c + r + 4) * ld + i, _mm256_permute2f128_ps(a[r], a[r + 4], 0x31));
      }
    }
    for (int64_t c = dv; c < d; ++c)
      for (int r = 0; r < 8; ++r) kt[c * ld + i + r] = static_cast<float>(key[r][c]);
  }
}

// The scores of 16 keys of a dim-major chunk (kt at their first), score8v's
// arithmetic key by key: dim c's product joins the partial sum c % 8 (fused
// multiply-adds from zero, in dim order), the eight sums meet as ((0 + 1) +
// (2 + 3)) + ((4 + 5) + (6 + 7)), the d % 8 tail dims' own fused sum is added,
// then the scale. Without the keys in the lanes there is no horizontal sum:
// 16 keys cost d fused multiply-adds, 7 adds (8 with tail dims) and a multiply.
template <int D>
DARE_AVX512 __attribute__((always_inline)) inline __m512 score16t(const __m512* qb, const float* kt, int64_t d,
                                                                  __m512 vscale) {
  constexpr int64_t ld = kChunk;  // a constant: every dim's row is a fixed offset from kt
  if constexpr (D > 0) d = D;
  const int64_t dv = d & ~int64_t(7);
  __m512 p[8];
#pragma GCC unroll 8
  for (int l = 0; l < 8; ++l) p[l] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int64_t c = 0; c < dv; c += 8) {
#pragma GCC unroll 8
    for (int l = 0; l < 8; ++l) p[l] = _mm512_fmadd_ps(qb[c + l], _mm512_loadu_ps(kt + (c + l) * ld), p[l]);
  }
  __m512 sum = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(p[0], p[1]), _mm512_add_ps(p[2], p[3])),
                             _mm512_add_ps(_mm512_add_ps(p[4], p[5]), _mm512_add_ps(p[6], p[7])));
  if (dv < d) {
    __m512 tail = _mm512_setzero_ps();
    for (int64_t c = dv; c < d; ++c) tail = _mm512_fmadd_ps(qb[c], _mm512_loadu_ps(kt + c * ld), tail);
    sum = _mm512_add_ps(sum, tail);
  }
  return _mm512_mul_ps(sum, vscale);
}

// scan_chunk for a target of a work item whose chunk is dim-major (kt, by
// transpose_chunk with m >= n a multiple of 16; d <= kTransposeDims): the
// scores are score_chunk's, bit for bit. A full pool
// tests each block of 16 against the threshold in its register and compresses
// the passing lanes into the raw candidates; until then the block's scores go
// to buf and TopK::offer.
template <int D>
DARE_AVX512 void scan_transposed_avx512(const float* q, const float* kt, int64_t n, int64_t d, float scale,
                                        TopK& top, int64_t base, const bool* keep, float* buf) {
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512 qb[kTransposeDims];  // the query's dims broadcast (d <= kTransposeDims)
  for (int64_t c = 0; c < d; ++c) qb[c] = _mm512_set1_ps(q[c]);
  if (!top.full()) {
    for (int64_t i = 0; i < n; i += 16) _mm512_storeu_ps(buf + i, score16t<D>(qb, kt + i, d, vscale));
    top.offer(buf, n, base, keep);
    return;
  }
  // The block's scores go to buf whole; only their positions are compressed
  // (one compression a block, and no branch: at k = 128 about half the blocks
  // have a candidate, in no predictable pattern).
  __m512 vt = _mm512_set1_ps(top.threshold());
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  uint32_t* rp = top.raw_positions();
  int64_t m = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 v = score16t<D>(qb, kt + i, d, vscale);
    __mmask16 live = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    if (keep) {
      const __m128i kb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(keep + i));  // keep holds kChunk
      live &= _mm_test_epi8_mask(kb, kb);
    }
    const __mmask16 bits = _mm512_mask_cmp_ps_mask(live, v, vt, _CMP_NLE_UQ);
    _mm512_storeu_ps(buf + i, v);
    _mm512_storeu_si512(rp + m, _mm512_maskz_compress_epi32(
                                    bits, _mm512_add_epi32(_mm512_set1_epi32(int32_t(base + i)), lanes)));
    m += __builtin_popcount(bits);
    if (m > TopK::raw_room()) {
      top.take_raw(m, buf, base);
      m = 0;
      vt = _mm512_set1_ps(top.threshold());
    }
  }
  top.take_raw(m, buf, base);
}
#endif

// The scores of n keys (as score_chunk) offered to top at positions base + i
// (keep: as TopK::offer). buf: n rounded up to 8 floats. Before the pool holds
// k the scores go through buf and TopK::offer; after, the AVX2 scan tests them
// in registers.
template <bool kAvx2, int D = 0, typename scalar_t>
__attribute__((always_inline)) inline void scan_chunk(const float* q, const scalar_t* x, int64_t stride, int64_t n,
                                                      int64_t d, float scale, TopK& top, int64_t base,
                                                      const bool* keep, float* buf) {
#ifdef DARE_X86
  if constexpr (kAvx2) {
    if (top.full()) {
      scan_full_avx2<scalar_t, D>(q, x, stride, n, d, scale, top, base, keep);
      return;
    }
  }
#endif
  score_chunk<kAvx2, D>(q, x, stride, n, d, scale, buf);
  top.offer(buf, n, base, keep);
}

// Work items of this many targets or more score a chunk of keys of up to
// kTransposeDims dims dim-major (AVX-512): the chunk's transposition costs
// about what eight targets' horizontal sums do.
constexpr int64_t kTransposeTargets = 8;

// Whether the AVX2 variant scores a work item of nt targets of d dims
// dim-major (and so needs scan_targets' kt buffer).
template <bool kAvx2>
inline bool dim_major(int64_t nt, int64_t d) {
  return kAvx2 && nt >= kTransposeTargets && d <= kTransposeDims && use_avx512();
}

// scan_chunk for the nt targets of a work item (queries q0 + t * d, pools
// tops[t]), the chunk's keys shared. buf: kChunk + 16 floats; kt: d * kChunk
// floats (used when dim_major<kAvx2>(nt, d)).
template <bool kAvx2, int D = 0, typename scalar_t>
inline void scan_targets(const float* q0, int64_t nt, const scalar_t* x, int64_t stride, int64_t n, int64_t d,
                         float scale, TopK* tops, int64_t base, const bool* keep, float* buf, float* kt) {
#ifdef DARE_X86
  if constexpr (kAvx2 && D <= kTransposeDims) {
    if (dim_major<kAvx2>(nt, d)) {
      transpose_chunk(x, stride, n, d, kt, (n + 15) & ~int64_t(15));
      for (int64_t t = 0; t < nt; ++t) scan_transposed_avx512<D>(q0 + t * d, kt, n, d, scale, tops[t], base, keep, buf);
      return;
    }
  }
#endif
  for (int64_t t = 0; t < nt; ++t) scan_chunk<kAvx2, D>(q0 + t * d, x, stride, n, d, scale, tops[t], base, keep, buf);
}

}  // namespace cpu
}  // namespace dare
