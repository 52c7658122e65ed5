// The CPU kernels' selection: the k best of a stream of scores, as packed
// (score, position) keys (order.h), filtered by a running threshold.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "../order.h"

namespace dare {
namespace cpu {

constexpr int64_t kChunk = 256;  // scores offered at once

// Moves the k largest of the distinct keys a[0, n) to a[0, k), in any order
// (1 <= k <= n), and returns the k-th largest. A quickselect whose partition
// has no data-dependent branch (each key is written to both sides, and the
// side's count advanced by the comparison): at k = 128 of 384 keys the
// branches of std::nth_element mispredicted on about every other key. The
// pivot is the sample's key at the rank of a[k - 1]'s expected place, so
// a pass most often leaves a short range. tmp holds n keys.
inline uint64_t select_top(uint64_t* a, int64_t n, int64_t k, uint64_t* tmp) {
  int64_t lo = 0, hi = n;  // a[0, lo) are above the k-th; a[hi, n) below it
  for (int pass = 0; hi - lo > 32 && pass < 16; ++pass) {
    // Pivot: the median of five keys spread over [lo, hi), nudged toward rank k.
    const int64_t m = hi - lo;
    uint64_t s[5];
    for (int i = 0; i < 5; ++i) s[i] = a[lo + (m * (2 * i + 1)) / 10];
    std::sort(s, s + 5, std::greater<uint64_t>());
    const int64_t want = ((k - lo) * 5) / m;  // where rank k falls in the sample
    const uint64_t p = s[std::clamp<int64_t>(want, 0, 4)];
    int64_t above = 0, below = 0;
    for (int64_t i = lo; i < hi; ++i) {
      const uint64_t x = a[i];
      a[lo + above] = x;  // never ahead of i: safe in place
      above += x > p;
      tmp[below] = x;
      below += x < p;
    }
    const int64_t r = lo + above;  // the pivot's rank
    a[r] = p;
    std::copy(tmp, tmp + below, a + r + 1);
    if (r == k - 1) return p;
    if (r > k - 1) hi = r;
    else lo = r + 1;
  }
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
  explicit TopK(int64_t k) : k_(k), slack_(std::max<int64_t>(k, 256)) {
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
  float* raw_scores() { return raw_s_.data(); }
  uint32_t* raw_positions() { return raw_p_.data(); }
  static constexpr int64_t raw_room() { return kRaw; }

  // Packs raw candidates [0, m) into the pool, compacting it when due.
  void take_raw(int64_t m) {
    for (int64_t j = 0; j < m; ++j) pool_[size_ + j] = pack(raw_s_[j], raw_p_[j]);
    size_ += m;
    if (size_ >= k_ + slack_) compact();
  }

  // Writes the best k, sorted, padded with (-inf, -1).
  void finish(float* out_scores, int64_t* out_indices) {
    if (size_ > k_) compact();
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
    if (tmp.size() < pool_.size()) tmp.resize(pool_.size());
    threshold_ = packed_score(select_top(pool_.data(), size_, k_, tmp.data()));
    size_ = k_;
  }

  static constexpr int64_t kRaw = 64;
  int64_t k_, slack_, size_ = 0;
  float threshold_ = 0.f;
  bool full_ = false;
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
