// The CPU kernels' selection: the k best of a stream of scores, as packed
// (score, position) keys (order.h), filtered by a running threshold.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "../order.h"
#include "isa.h"

namespace dare {
namespace cpu {

constexpr int64_t kChunk = 256;  // scores offered at once

#ifdef DARE_X86
// out[j] = pack(scores[j], positions[j]) for j < m, 16 at a time (out holds m
// rounded up to 16); scores == nullptr: the score of position p is chunk[p - base].
DARE_AVX512 inline void pack_avx512(const float* scores, const uint32_t* positions, int64_t m, uint64_t* out,
                                    const float* chunk = nullptr, int64_t base = 0) {
  const __m512i sign = _mm512_set1_epi32(int32_t(0x80000000u));
  // (~position, key) pairs of lanes 0-7, then 8-15: the 32-bit halves of a packed key.
  const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (int64_t j = 0; j < m; j += 16) {
    const __m512i p = _mm512_loadu_si512(positions + j);
    const __mmask16 live = m - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (m - j)) - 1);
    const __m512 v = scores ? _mm512_loadu_ps(scores + j)
                            : _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live,
                                                       _mm512_sub_epi32(p, _mm512_set1_epi32(int32_t(base))), chunk, 4);
    __m512i u = _mm512_castps_si512(v);
    u = _mm512_mask_mov_epi32(u, _mm512_cmpeq_epi32_mask(u, sign), _mm512_setzero_si512());  // -0 -> +0
    __m512i key = _mm512_mask_blend_epi32(_mm512_test_epi32_mask(u, sign), _mm512_or_si512(u, sign),
                                          _mm512_ternarylogic_epi32(u, u, u, 0x55));  // negative: ~u
    key = _mm512_mask_mov_epi32(key, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(-1));
    const __m512i pos = _mm512_ternarylogic_epi32(p, p, p, 0x55);  // ~position
    _mm512_storeu_si512(out + j, _mm512_permutex2var_epi32(pos, first, key));
    _mm512_storeu_si512(out + j + 8, _mm512_permutex2var_epi32(pos, second, key));
  }
}

// A partition pass of select_top over a[lo, hi) around p (a key there), 8 keys
// at a time: the keys above p to a[lo, lo + above), those below to tmp + below.
// Returns where it stopped (fewer than 8 keys before hi); select_top's scalar
// loop takes the rest.
DARE_AVX512 inline int64_t partition_avx512(uint64_t* a, int64_t lo, int64_t hi, uint64_t p, uint64_t* tmp,
                                            int64_t& above, int64_t& below) {
  const __m512i vp = _mm512_set1_epi64(int64_t(p));
  int64_t i = lo;
  for (; i + 8 <= hi; i += 8) {
    const __m512i x = _mm512_loadu_si512(a + i);
    const __mmask8 gt = _mm512_cmpgt_epu64_mask(x, vp), lt = _mm512_cmplt_epu64_mask(x, vp);
    // The 8 stored at a + lo + above end by i + 8: keys already loaded.
    _mm512_storeu_si512(a + lo + above, _mm512_maskz_compress_epi64(gt, x));
    _mm512_storeu_si512(tmp + below, _mm512_maskz_compress_epi64(lt, x));
    above += __builtin_popcount(gt);
    below += __builtin_popcount(lt);
  }
  return i;
}

// The maskz forms, all lanes: the same instructions; GCC 12's plain forms warn
// (-Wmaybe-uninitialized) on their own undefined pass-through operand.
DARE_AVX512 inline __m512i max_u64(__m512i a, __m512i b) { return _mm512_maskz_max_epu64(0xFF, a, b); }
DARE_AVX512 inline __m512i min_u64(__m512i a, __m512i b) { return _mm512_maskz_min_epu64(0xFF, a, b); }
DARE_AVX512 inline __m512i permute_u64(__m512i idx, __m512i a) { return _mm512_maskz_permutexvar_epi64(0xFF, idx, a); }

// Sorts a[0, n) descending, n <= 256: a bitonic network on the keys padded
// with zeros (below every packed key) to a power of two >= 8, 8 keys a vector,
// no branch on the data (std::sort's compares mispredicted about half the time:
// a quarter of a many-targets call at k = 128).
DARE_AVX512 inline void sort_desc_avx512(uint64_t* a, int64_t n) {
  alignas(64) uint64_t buf[256];
  int64_t N = 8;
  while (N < n) N *= 2;
  std::copy(a, a + n, buf);
  std::fill(buf + n, buf + N, uint64_t(0));
  const __m512i lane = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t size = 2; size <= N; size *= 2) {
    for (int64_t stride = size / 2; stride > 0; stride /= 2) {
      if (stride >= 8) {  // pairs 8 apart or more: whole vectors
        for (int64_t i = 0; i < N; i += 2 * stride) {
          const bool asc = (i & size) != 0;  // the run's direction: descending unless its bit `size` is set
          for (int64_t j = i; j < i + stride; j += 8) {
            const __m512i x = _mm512_load_si512(buf + j), y = _mm512_load_si512(buf + j + stride);
            const __m512i hi = max_u64(x, y), lo = min_u64(x, y);
            _mm512_store_si512(buf + j, asc ? lo : hi);
            _mm512_store_si512(buf + j + stride, asc ? hi : lo);
          }
        }
      } else {  // pairs within a vector: lane l and l ^ stride
        const __m512i partner = _mm512_xor_si512(lane, _mm512_set1_epi64(stride));
        const __mmask8 lower = stride == 1 ? 0x55 : stride == 2 ? 0x33 : 0x0F;
        for (int64_t j = 0; j < N; j += 8) {
          const __mmask8 asc = size == 2 ? 0xCC : size == 4 ? 0xF0 : (j & size) ? 0xFF : 0x00;
          const __m512i x = _mm512_load_si512(buf + j);
          const __m512i y = permute_u64(partner, x);
          // A descending run's lower lane keeps the larger key; an ascending run's the smaller.
          const __mmask8 take_max = __mmask8(lower ^ asc);
          _mm512_store_si512(buf + j, _mm512_mask_blend_epi64(take_max, min_u64(x, y),
                                                              max_u64(x, y)));
        }
      }
    }
  }
  std::copy(buf, buf + n, a);
}
#endif

#ifdef DARE_X86
// The AVX2 forms (4 keys a vector; unsigned order as signed after flipping the
// top bit): for a CPU without AVX-512 (vector_level() == 1).

// Lane pairs (32-bit) that move the set lanes of a 4-bit mask to the front.
struct LeftPack4 {
  int32_t order[16][8];
  constexpr LeftPack4() : order() {
    for (int m = 0; m < 16; ++m) {
      int n = 0;
      for (int j = 0; j < 4; ++j)
        if (m >> j & 1) {
          order[m][2 * n] = 2 * j;
          order[m][2 * n + 1] = 2 * j + 1;
          ++n;
        }
    }
  }
};
inline constexpr LeftPack4 kLeftPack4;

DARE_AVX2 inline __m256i gt_u64(__m256i x, __m256i y) {
  const __m256i top = _mm256_set1_epi64x(int64_t(0x8000000000000000ull));
  return _mm256_cmpgt_epi64(_mm256_xor_si256(x, top), _mm256_xor_si256(y, top));
}

// pack_avx512 for 8 raw candidates at a time (scores given).
DARE_AVX2 inline void pack_avx2(const float* scores, const uint32_t* positions, int64_t m, uint64_t* out) {
  const __m256i sign = _mm256_set1_epi32(int32_t(0x80000000u));
  for (int64_t j = 0; j < m; j += 8) {
    const __m256 v = _mm256_loadu_ps(scores + j);
    __m256i u = _mm256_castps_si256(v);
    u = _mm256_andnot_si256(_mm256_cmpeq_epi32(u, sign), u);  // -0 -> +0
    __m256i key = _mm256_xor_si256(u, _mm256_or_si256(_mm256_srai_epi32(u, 31), sign));  // negative: ~u; else u | sign
    key = _mm256_or_si256(key, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));  // NaN: all ones
    const __m256i pos = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(positions + j)),
                                         _mm256_set1_epi32(-1));  // ~position
    const __m256i lo = _mm256_unpacklo_epi32(pos, key), hi = _mm256_unpackhi_epi32(pos, key);  // 0 1 4 5, 2 3 6 7
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), _mm256_permute2x128_si256(lo, hi, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j + 4), _mm256_permute2x128_si256(lo, hi, 0x31));
  }
}

// partition_avx512, 4 keys at a time, the left-packing by a table.
DARE_AVX2 inline int64_t partition_avx2(uint64_t* a, int64_t lo, int64_t hi, uint64_t p, uint64_t* tmp,
                                        int64_t& above, int64_t& below) {
  const __m256i vp = _mm256_set1_epi64x(int64_t(p));
  int64_t i = lo;
  for (; i + 4 <= hi; i += 4) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i));
    const int gt = _mm256_movemask_pd(_mm256_castsi256_pd(gt_u64(x, vp)));
    const int lt = _mm256_movemask_pd(_mm256_castsi256_pd(gt_u64(vp, x)));
    const __m256i to_gt = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLeftPack4.order[gt]));
    const __m256i to_lt = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLeftPack4.order[lt]));
    // The 4 stored at a + lo + above end by i + 4: keys already loaded.
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(a + lo + above), _mm256_permutevar8x32_epi32(x, to_gt));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(tmp + below), _mm256_permutevar8x32_epi32(x, to_lt));
    above += __builtin_popcount(gt);
    below += __builtin_popcount(lt);
  }
  return i;
}

// sort_desc_avx512, 4 keys a vector: n <= 256, padded with zeros to a power of two >= 4.
DARE_AVX2 inline void sort_desc_avx2(uint64_t* a, int64_t n) {
  alignas(32) uint64_t buf[256];
  int64_t N = 4;
  while (N < n) N *= 2;
  std::copy(a, a + n, buf);
  std::fill(buf + n, buf + N, uint64_t(0));
  __m256i* v = reinterpret_cast<__m256i*>(buf);  // v[j / 4]: keys j .. j + 3
  const __m256i all = _mm256_set1_epi64x(-1), none = _mm256_setzero_si256();
  for (int64_t size = 2; size <= N; size *= 2) {
    for (int64_t stride = size / 2; stride > 0; stride /= 2) {
      if (stride >= 4) {
        for (int64_t i = 0; i < N; i += 2 * stride) {
          const bool asc = (i & size) != 0;
          for (int64_t j = i; j < i + stride; j += 4) {
            const __m256i x = v[j / 4], y = v[(j + stride) / 4], g = gt_u64(x, y);
            const __m256i big = _mm256_blendv_epi8(y, x, g), small = _mm256_blendv_epi8(x, y, g);
            v[j / 4] = asc ? small : big;
            v[(j + stride) / 4] = asc ? big : small;
          }
        }
      } else {  // lane l and l ^ stride within a vector
        const __m256i lower = stride == 1 ? _mm256_setr_epi64x(-1, 0, -1, 0) : _mm256_setr_epi64x(-1, -1, 0, 0);
        for (int64_t j = 0; j < N; j += 4) {
          const __m256i asc = size == 2 ? _mm256_setr_epi64x(0, 0, -1, -1) : (j & size) ? all : none;
          const __m256i x = v[j / 4];
          const __m256i y = stride == 1 ? _mm256_permute4x64_epi64(x, 0xB1) : _mm256_permute4x64_epi64(x, 0x4E);
          const __m256i g = gt_u64(x, y);
          const __m256i big = _mm256_blendv_epi8(y, x, g), small = _mm256_blendv_epi8(x, y, g);
          v[j / 4] = _mm256_blendv_epi8(small, big, _mm256_xor_si256(lower, asc));  // the larger where set
        }
      }
    }
  }
  std::copy(buf, buf + n, a);
}
#endif

// Moves the k largest of the distinct keys a[0, n) to a[0, k), in any order
// (1 <= k <= n; a[k, n) is left undefined), and returns the k-th largest. A
// quickselect whose partition has no data-dependent branch (each key is written to both sides, and the
// side's count advanced by the comparison): at k = 128 of 384 keys the
// branches of std::nth_element mispredicted on about every other key. The
// pivot is the sample's key at the rank of a[k - 1]'s expected place, so
// a pass most often leaves a short range. tmp holds n + 8 keys. vec: the
// vector_level() of the partitions and the last range's sort.
inline uint64_t select_top(uint64_t* a, int64_t n, int64_t k, uint64_t* tmp, int vec = 0) {
  int64_t lo = 0, hi = n;  // a[0, lo) are above the k-th, which is in a[lo, hi)
  for (int pass = 0; hi - lo > 32 && pass < 16; ++pass) {
    // Pivot: of five keys spread over [lo, hi), the one at rank k's expected
    // place (each key's rank among the five counted, not sorted: no branch).
    const int64_t m = hi - lo;
    uint64_t s[5], ranked[5];
    for (int i = 0; i < 5; ++i) s[i] = a[lo + (m * (2 * i + 1)) / 10];
    for (int i = 0; i < 5; ++i) {
      int r = 0;
      for (int j = 0; j < 5; ++j) r += s[j] > s[i] || (s[j] == s[i] && j < i);
      ranked[r] = s[i];  // distinct ranks, even for equal keys
    }
    const uint64_t p = ranked[std::clamp<int64_t>(((k - lo) * 5) / m, 0, 4)];
    int64_t above = 0, below = 0, i = lo;
#ifdef DARE_X86
    if (vec == 2) i = partition_avx512(a, lo, hi, p, tmp, above, below);
    else if (vec == 1) i = partition_avx2(a, lo, hi, p, tmp, above, below);
#endif
    for (; i < hi; ++i) {  // the whole range, or what the vector pass left
      const uint64_t x = a[i];
      a[lo + above] = x;  // never ahead of i: safe in place
      above += x > p;
      tmp[below] = x;
      below += x < p;
    }
    const int64_t r = lo + above;  // the pivot's rank
    if (r == k - 1) {
      a[r] = p;
      return p;
    }
    if (r > k - 1) {  // only a[0, k) is kept: the pivot and the keys below it go
      hi = r;
    } else {
      a[r] = p;
      std::copy(tmp, tmp + below, a + r + 1);
      lo = r + 1;
    }
  }
#ifdef DARE_X86
  if (vec && hi - lo <= 256) {
    if (vec == 2) sort_desc_avx512(a + lo, hi - lo);
    else sort_desc_avx2(a + lo, hi - lo);
    return a[k - 1];
  }
#endif
  std::nth_element(a + lo, a + (k - 1), a + hi, std::greater<uint64_t>());  // lo <= k - 1 < hi
  return a[k - 1];
}

// Keeps the k best of a stream of packed keys. Candidates that beat the
// threshold (the k-th best at the last compaction) are appended without any
// ordering work; when the pool holds k + slack of them, one selection keeps
// the best k and raises the threshold. Far cheaper per accepted candidate than
// a heap, whose unpredictable sift branches dominated at k = 128.
class TopK {
 public:
  explicit TopK(int64_t k) : k_(k), slack_(std::max<int64_t>(k, 256)), vec_(vector_level()) {
    pool_.resize(k_ + slack_ + std::max(kChunk, kRaw + 16));
    raw_s_.resize(kRaw + 16);
    raw_p_.resize(kRaw + 16);
  }

  void reset() {
    size_ = 0;
    threshold_ = -std::numeric_limits<float>::infinity();
    full_ = false;
  }

  // Whether k are held: from then on a score joins only if !(score <= threshold()).
  bool full() const { return full_; }
  float threshold() const { return threshold_; }

  // Offers scores[0, n) at positions base + i: all of them, or (keep given)
  // those with keep[i]; the others are absent, whatever their score.
  void offer(const float* scores, int64_t n, int64_t base, const bool* keep = nullptr) {
    if (keep)
      offer_<true>(scores, n, base, keep);
    else
      offer_<false>(scores, n, base, nullptr);
  }

  // The raw candidates of a full pool (the vector scans', which write them
  // unpacked, 8 or 16 slots at a time): a write may start at any m <=
  // raw_room() and run 16 slots; take_raw(m) hands the m written over.
  // take_raw(m, chunk, base): the positions alone were written, position p's
  // score is chunk[p - base].
  float* raw_scores() { return raw_s_.data(); }
  uint32_t* raw_positions() { return raw_p_.data(); }
  static constexpr int64_t raw_room() { return kRaw; }

  // Packs raw candidates [0, m) into the pool, compacting it when due.
  void take_raw(int64_t m, const float* chunk = nullptr, int64_t base = 0) {
#ifdef DARE_X86
    if (vec_ == 2) pack_avx512(chunk ? nullptr : raw_s_.data(), raw_p_.data(), m, pool_.data() + size_, chunk, base);
    else if (vec_ == 1 && !chunk) pack_avx2(raw_s_.data(), raw_p_.data(), m, pool_.data() + size_);
    else
#endif
      for (int64_t j = 0; j < m; ++j)
        pool_[size_ + j] = pack(chunk ? chunk[raw_p_[j] - uint32_t(base)] : raw_s_[j], raw_p_[j]);
    size_ += m;
    if (size_ >= k_ + slack_) compact();
  }

  // Writes the best k, sorted, padded with (-inf, -1).
  void finish(float* out_scores, int64_t* out_indices) {
    if (size_ > k_) compact();
#ifdef DARE_X86
    if (vec_ == 2 && size_ <= 256) sort_desc_avx512(pool_.data(), size_);
    else if (vec_ == 1 && size_ <= 256) sort_desc_avx2(pool_.data(), size_);
    else
#endif
      std::sort(pool_.begin(), pool_.begin() + size_, std::greater<uint64_t>());
    for (int64_t i = 0; i < size_; ++i) {
      out_scores[i] = packed_score(pool_[i]);
      out_indices[i] = packed_pos(pool_[i]);
    }
    for (int64_t i = size_; i < k_; ++i) {
      out_scores[i] = -std::numeric_limits<float>::infinity();
      out_indices[i] = -1;
    }
  }

 private:
  template <bool kKeep>
  void offer_(const float* scores, int64_t n, int64_t base, const bool* keep) {
    int64_t i = 0;
    if (!full_) {  // until k are held, everything (kept) is a candidate
      if constexpr (kKeep) {
        for (; i < n && size_ < k_; ++i)
          if (keep[i]) pool_[size_++] = pack(scores[i], uint32_t(base + i));
      } else {
        const int64_t take = std::min(n, k_ - size_);
        for (; i < take; ++i) pool_[size_++] = pack(scores[i], uint32_t(base + i));
      }
      if (size_ < k_) return;
      full_ = true;
      uint64_t worst = pool_[0];
      for (int64_t j = 1; j < size_; ++j) worst = std::min(worst, pool_[j]);
      threshold_ = packed_score(worst);
    }
    // A later position never beats an equal score, so "<=" may reject; NaN
    // fails the test and is kept. Branch-free: most scores are rejected.
    const float t = threshold_;
    int64_t m = 0;
    for (; i < n; ++i) {
      hits_[m] = int32_t(i);
      if constexpr (kKeep)
        m += keep[i] & !(scores[i] <= t);
      else
        m += !(scores[i] <= t);
    }
    for (int64_t j = 0; j < m; ++j) pool_[size_++] = pack(scores[hits_[j]], uint32_t(base + hits_[j]));
    if (size_ >= k_ + slack_) compact();
  }

  void compact() {
    thread_local std::vector<uint64_t> tmp;  // one a thread: every TopK of an item shares it
    if (tmp.size() < pool_.size() + 8) tmp.resize(pool_.size() + 8);
    threshold_ = packed_score(select_top(pool_.data(), size_, k_, tmp.data(), vec_));
    size_ = k_;
  }

  static constexpr int64_t kRaw = 64;
  int64_t k_, slack_, size_ = 0;
  float threshold_ = 0.f;
  bool full_ = false;
  int vec_;  // vector_level(): the packing, partitions and sorts
  std::vector<uint64_t> pool_;
  std::vector<float> raw_s_;
  std::vector<uint32_t> raw_p_;
  int32_t hits_[kChunk];
};

// Targets of one row per work item of a many-targets call: all of a row's when
// the rows alone keep every thread busy, else as many as leave one item per
// thread (each item reads the row's keys again: once per thread, against T
// scorings); at most what bounds an item's TopK pools to ~16 MB.
inline int64_t targets_per_item(int64_t B, int64_t T, int64_t k, int64_t threads) {
  const int64_t per_row = std::min(T, (std::max<int64_t>(threads, 1) + B - 1) / B);
  const int64_t pool_bytes = (2 * k + 512) * int64_t(sizeof(uint64_t));  // a TopK's pool, k >= 1
  return std::clamp<int64_t>(std::min((T + per_row - 1) / per_row, (int64_t(16) << 20) / pool_bytes), 1, T);
}

}  // namespace cpu
}  // namespace dare
