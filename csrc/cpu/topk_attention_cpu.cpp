// Fused CPU kernel: one pass over each row's keys computes the float32 scores
// of a chunk, then a threshold test passes only the few candidates that can
// still enter the top k (about k·ln(L/k) of L for random data) to a small
// selection pool of packed (score, position) keys. The pass is bound by reading
// the keys, not by selection. Several targets of one row (query (B, T, d))
// share the pass: each chunk of keys is scored for all of them while it is in
// L1. Keys are read through their strides (expand()ed keys are not copied);
// masks and jagged rows in place (layout.h).
#include <algorithm>
#include <functional>
#include <limits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "../check.h"
#include "../order.h"
#include "isa.h"
#include "layout.h"
#include "score.h"
#include "select.h"

namespace dare {
namespace {

using cpu::kChunk;
using cpu::Layout;
using cpu::TopK;

struct Rows {
  const void* keys;        // (B, L, d) or jagged (N, d), the d elements of a key contiguous
  int64_t stride_b, stride_l;  // in elements; 0 for broadcast (expand()ed) keys and jagged rows
  const float* query;      // (B*T, d) contiguous, float32
  Layout layout;
  float* scores;           // (B*T, k)
  int64_t* indices;        // (B*T, k)
  int64_t T, d, k;
  int64_t group;  // targets of one row b per work item: they share each chunk of keys
  int64_t chunk;  // keys per chunk (<= kChunk, a multiple of 8)
  float scale;
};


// Work item i: row b = i / groups and its targets [t0, t0 + group). Each chunk
// of the row's keys is scored against every target of the item while it is in
// cache (B = 1, T = 64, d = 128: the keys are read from memory once per item,
// not once per target).
//
// Not inlined into the ISA entry point: its hot loops are the DARE_AVX2 /
// DARE_AVX512 scans it calls (inlining the item loop into run_avx2 measured
// 16% slower at T = 1024, d = 16, k = 128).
template <typename scalar_t, bool kAvx2, int D>
void scan_rows(const Rows& r, int64_t begin, int64_t end) {
  const int64_t groups = (r.T + r.group - 1) / r.group;
  std::vector<TopK> top;
  top.reserve(std::min(r.group, r.T));
  for (int64_t t = 0; t < std::min(r.group, r.T); ++t) top.emplace_back(r.k);
  alignas(64) float buf[kChunk + 16];  // + 16: a vector scan's last block writes 16 scores
  bool keep[kChunk];
  std::vector<float> kt(cpu::dim_major<kAvx2>(r.group, r.d) ? r.d * kChunk : 0);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t b = item / groups;
    const int64_t t0 = (item % groups) * r.group;
    const int64_t nt = std::min(r.group, r.T - t0);
    const int64_t len = r.layout.len(b);
    const scalar_t* keys = static_cast<const scalar_t*>(r.keys) + b * r.stride_b + r.layout.start(b) * r.stride_l;
    const float* q0 = r.query + (b * r.T + t0) * r.d;
    for (int64_t t = 0; t < nt; ++t) top[t].reset();
    for (int64_t j0 = 0; j0 < len; j0 += r.chunk) {
      const int64_t n = std::min(r.chunk, len - j0);
      const scalar_t* x = keys + j0 * r.stride_l;
      // Masked-out keys are scored like any other (may be NaN) and not offered;
      // a chunk the mask leaves whole takes the plain offer.
      const bool* kept = nullptr;
      if (r.layout.mask) {
        const int64_t m = r.layout.load_keep(b, j0, n, keep);
        if (m == 0) continue;
        if (m < n) kept = keep;
      }
      cpu::scan_targets<kAvx2, D>(q0, nt, x, r.stride_l, n, r.d, r.scale, top.data(), j0, kept, buf, kt.data());
    }
    for (int64_t t = 0; t < nt; ++t) {
      const int64_t row = b * r.T + t0 + t;
      top[t].finish(r.scores + row * r.k, r.indices + row * r.k);
    }
  }
}

// The entry point cpu::pick_scan compiles for each ISA.
struct Scan {
  template <typename scalar_t, bool kAvx2>
  __attribute__((always_inline)) static void run(const Rows& r, int64_t begin, int64_t end) {
    cpu::with_dim<kAvx2>(r.d, [&](auto D) { scan_rows<scalar_t, kAvx2, D.value>(r, begin, end); });
  }
};

std::tuple<at::Tensor, at::Tensor> topk_attention_cpu(const at::Tensor& query,
                                                      const at::Tensor& keys, int64_t k,
                                                      const Opt& lengths, double scale, const Opt& mask,
                                                      const Opt& offsets) {
  check_scale(scale);
  const Shape s = check_inputs(query, keys, k, lengths, mask, offsets, /*check_length_values=*/true);
  auto [scores, indices] = empty_outputs(keys, s, k);
  const int64_t rows = s.B * s.T;
  if (rows == 0) return {scores, indices};

  // Keys are read through their batch and position strides (stride 0 included:
  // expand()ed keys are not copied); only keys whose d elements are not
  // contiguous are copied. float8_e4m3fn keys (a GPU format) are upcast to
  // bfloat16, which holds every e4m3 value exactly: a copy of 2 bytes a dim.
  const at::Tensor K8 = keys.scalar_type() == at::kFloat8_e4m3fn ? keys.to(at::kBFloat16) : keys;
  const at::Tensor K = K8.stride(-1) == 1 || s.d == 1 ? K8 : K8.contiguous();
  const at::Tensor Q = query.reshape({rows, s.d}).to(at::kFloat).contiguous();
  std::vector<at::Tensor> hold;
  const Layout layout = cpu::make_layout(lengths, mask, offsets, s.L, hold);
  const int64_t group = cpu::targets_per_item(s.B, s.T, k, at::get_num_threads());
  // Several targets re-read a chunk from L1: ~32 KB of keys (B = 1, T = 64, L = 10000,
  // d = 128, one thread: 8 / 16 / 32 / 64 / 128 KB 4.1 / 3.5 / 3.3 / 4.2 / 4.5 ms).
  const int64_t key_bytes = s.d * int64_t(K.element_size());
  const int64_t chunk = group == 1 ? kChunk : std::clamp<int64_t>((32 * 1024 / key_bytes) & ~int64_t(7), 8, kChunk);
  const Rows r{K.const_data_ptr(), s.jagged ? 0 : K.stride(0), K.stride(-2), Q.const_data_ptr<float>(), layout,
               scores.mutable_data_ptr<float>(), indices.mutable_data_ptr<int64_t>(),
               s.T, s.d, k, group, chunk, static_cast<float>(scale)};
  const int64_t items = s.B * ((s.T + group - 1) / group);
  static const auto scan = cpu::pick_scan<Scan, const Rows&, int64_t, int64_t>();
  const at::ScalarType t = K.scalar_type();
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) { scan(t, r, begin, end); });
  return {scores, indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(dare, CPU, m) { m.impl("topk_attention", &topk_attention_cpu); }

}  // namespace dare
