// Fused CPU kernel: one pass over each row's keys computes the float32 scores
// of a chunk, then a threshold test sends the rare candidate that beats the
// current k-th best into a min-heap of packed (score, position) keys. For
// random data only ~k·ln(L/k) of the L keys reach the heap, so the pass is
// bound by reading the keys, not by selection.
#include <algorithm>
#include <functional>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "../check.h"
#include "../order.h"

namespace dare {
namespace {

constexpr int64_t kChunk = 256;

struct Rows {
  const void* keys;      // (B, L, d) contiguous
  const float* query;    // (B*T, d) contiguous, float32
  const int64_t* lengths;  // (B,) or nullptr
  float* scores;         // (B*T, k)
  int64_t* indices;      // (B*T, k)
  int64_t T, L, d, k;
  float scale;
};

template <typename scalar_t>
__attribute__((always_inline)) inline float dot(const float* q, const scalar_t* x, int64_t d) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < d; ++i) s += q[i] * static_cast<float>(x[i]);
  return s;
}

template <typename scalar_t>
__attribute__((always_inline)) inline void scan_rows(const Rows& r, int64_t begin, int64_t end) {
  std::vector<uint64_t> heap;
  heap.reserve(r.k);
  float buf[kChunk];
  const auto worse = std::greater<uint64_t>();  // min-heap: front is the k-th best
  for (int64_t row = begin; row < end; ++row) {
    const int64_t b = row / r.T;
    const int64_t len = r.lengths ? r.lengths[b] : r.L;
    const scalar_t* keys = static_cast<const scalar_t*>(r.keys) + b * r.L * r.d;
    const float* q = r.query + row * r.d;
    heap.clear();
    float threshold = 0.f;  // score at heap front once the heap is full
    for (int64_t j0 = 0; j0 < len; j0 += kChunk) {
      const int64_t n = std::min(kChunk, len - j0);
      for (int64_t i = 0; i < n; ++i) buf[i] = dot(q, keys + (j0 + i) * r.d, r.d) * r.scale;
      for (int64_t i = 0; i < n; ++i) {
        const float s = buf[i];
        if (static_cast<int64_t>(heap.size()) < r.k) {
          heap.push_back(pack(s, uint32_t(j0 + i)));
          std::push_heap(heap.begin(), heap.end(), worse);
          if (static_cast<int64_t>(heap.size()) == r.k) threshold = packed_score(heap.front());
          continue;
        }
        // A later position never beats an equal score, so "<=" may skip; NaN
        // fails the test and takes the exact comparison below.
        if (s <= threshold) continue;
        const uint64_t p = pack(s, uint32_t(j0 + i));
        if (p <= heap.front()) continue;
        std::pop_heap(heap.begin(), heap.end(), worse);
        heap.back() = p;
        std::push_heap(heap.begin(), heap.end(), worse);
        threshold = packed_score(heap.front());
      }
    }
    std::sort(heap.begin(), heap.end(), worse);
    float* out_s = r.scores + row * r.k;
    int64_t* out_i = r.indices + row * r.k;
    const int64_t m = static_cast<int64_t>(heap.size());
    for (int64_t i = 0; i < m; ++i) {
      out_s[i] = packed_score(heap[i]);
      out_i[i] = packed_pos(heap[i]);
    }
    for (int64_t i = m; i < r.k; ++i) {
      out_s[i] = -std::numeric_limits<float>::infinity();
      out_i[i] = -1;
    }
  }
}

// Compiled twice: for AVX2/FMA/F16C and for the baseline ISA, picked at run
// time, so one binary is both fast here and safe on older CPUs.
#define DARE_SCAN_VARIANT(name, attrs)                                          \
  attrs void name(at::ScalarType t, const Rows& r, int64_t begin, int64_t end) { \
    switch (t) {                                                                \
      case at::kFloat: return scan_rows<float>(r, begin, end);                  \
      case at::kHalf: return scan_rows<c10::Half>(r, begin, end);               \
      case at::kBFloat16: return scan_rows<c10::BFloat16>(r, begin, end);       \
      default: TORCH_CHECK(false, "topk_attention: unreachable dtype");         \
    }                                                                           \
  }

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
DARE_SCAN_VARIANT(scan_avx2, __attribute__((target("avx2,fma,f16c"))))
#endif
DARE_SCAN_VARIANT(scan_baseline, )

using ScanFn = void (*)(at::ScalarType, const Rows&, int64_t, int64_t);

ScanFn pick_scan() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return scan_avx2;
#endif
  return scan_baseline;
}

std::tuple<at::Tensor, at::Tensor> topk_attention_cpu(const at::Tensor& query,
                                                      const at::Tensor& keys, int64_t k,
                                                      const std::optional<at::Tensor>& lengths,
                                                      double scale) {
  const Shape s = check_inputs(query, keys, k, lengths, /*check_length_values=*/true);
  std::vector<int64_t> out_shape = s.multi_target ? std::vector<int64_t>{s.B, s.T, k}
                                                  : std::vector<int64_t>{s.B, k};
  at::Tensor scores = at::empty(out_shape, keys.options().dtype(at::kFloat));
  at::Tensor indices = at::empty(out_shape, keys.options().dtype(at::kLong));
  const int64_t rows = s.B * s.T;
  if (rows == 0) return {scores, indices};

  const at::Tensor K = keys.contiguous();
  const at::Tensor Q = query.reshape({rows, s.d}).to(at::kFloat).contiguous();
  at::Tensor len;
  if (lengths.has_value()) len = lengths->to(at::kLong).contiguous();
  const Rows r{K.const_data_ptr(), Q.const_data_ptr<float>(),
               len.defined() ? len.const_data_ptr<int64_t>() : nullptr,
               scores.mutable_data_ptr<float>(), indices.mutable_data_ptr<int64_t>(),
               s.T, s.L, s.d, k, static_cast<float>(scale)};
  static const ScanFn scan = pick_scan();
  const at::ScalarType t = keys.scalar_type();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) { scan(t, r, begin, end); });
  return {scores, indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(dare, CPU, m) { m.impl("topk_attention", &topk_attention_cpu); }

}  // namespace dare
