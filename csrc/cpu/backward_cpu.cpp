// CPU backward of both ops in one call each: the query's gradient and the keys'
// (or each table's) gradient from the B*T*k selected entries alone (no B x L
// score tensor, no float32 copy of keys or a table). The touched rows are found
// by sorting the selected entries by row; each row's sum is formed in float32 and
// rounded once, so duplicates (an id selected twice, a key several targets
// select) accumulate exactly as index_add in float32 does (dare_kernels/_contract.py
// holds the same formulas in PyTorch ops). A key of topk_attention is row
// b * L + j of the keys viewed as (B*L, d) (jagged: row start + j of (N, d)).
#include <algorithm>
#include <type_traits>
#include <cstdint>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../check.h"

namespace dare {
namespace {

struct Ids {
  const void* data;
  bool i64;
  int64_t stride_b, stride_l;  // (L,) ids shared by every row: stride_b = 0; jagged: b unused

  int64_t at(int64_t b, int64_t j) const {
    const int64_t i = b * stride_b + j * stride_l;
    return i64 ? static_cast<const int64_t*>(data)[i] : int64_t(static_cast<const int32_t*>(data)[i]);
  }
};

template <typename T>
float as_float(T v) { return static_cast<float>(v); }

// The row of every selected entry (r, kk) of field f, or -1 where the entry is
// padding (index -1) or its id is out of [0, n) (such entries get no gradient,
// as the CUDA kernels never read them).
std::vector<int64_t> selected_rows(const int64_t* idx, int64_t R, int64_t T, int64_t K, const Ids& ids, int64_t n,
                                   const int64_t* starts, int64_t N) {
  std::vector<int64_t> rows(size_t(R * K));
  at::parallel_for(0, R, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / T;
      for (int64_t kk = 0; kk < K; ++kk) {
        const int64_t j = idx[r * K + kk];
        int64_t row = -1;
        // Padded positions past L, jagged rows of an empty stream: no key (the GPU's rule).
        if (j >= 0 && (starts ? N > 0 : j < N)) {
          const int64_t pos = starts ? std::min(starts[b] + j, N - 1) : j;
          const int64_t id = ids.at(starts ? 0 : b, pos);
          if (id >= 0 && id < n) row = id;
        }
        rows[size_t(r * K + kk)] = row;
      }
    }
  });
  return rows;
}

// Adds g[r, kk] * table[row] over a target's selected entries to its query
// gradient acc[r, off:off+d] (float32).
template <typename scalar_t>
void query_grad(const float* g, const std::vector<int64_t>& rows, const scalar_t* table, int64_t stride, int64_t d,
                int64_t off, int64_t D, int64_t R, int64_t K, float* acc) {
  at::parallel_for(0, R, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* a = acc + r * D + off;
      for (int64_t kk = 0; kk < K; ++kk) {
        const int64_t row = rows[size_t(r * K + kk)];
        if (row < 0) continue;
        const float w = g[r * K + kk];
        const scalar_t* x = table + row * stride;
        for (int64_t c = 0; c < d; ++c) a[c] += w * as_float(x[c]);
      }
    }
  });
}

// The touched rows of a table, ascending, and which selected entries add to each:
// entries[seg[i] .. seg[i+1]) of `entries` (sorted by row, then entry: a fixed
// summation order).
struct Touched {
  std::vector<int64_t> rows, seg, entries;
};

Touched touched(const std::vector<int64_t>& rows) {
  std::vector<std::pair<int64_t, int64_t>> order;
  for (size_t e = 0; e < rows.size(); ++e)
    if (rows[e] >= 0) order.emplace_back(rows[e], int64_t(e));
  std::sort(order.begin(), order.end());
  Touched t;
  t.entries.reserve(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    if (i == 0 || order[i].first != order[i - 1].first) {
      t.seg.push_back(int64_t(i));
      t.rows.push_back(order[i].first);
    }
    t.entries.push_back(order[i].second);
  }
  t.seg.push_back(int64_t(order.size()));
  return t;
}

// Writes touched row i's sum of g[e] * q[r(e), off:off+d], formed in float32 and
// rounded once, to out + i * out_stride (sparse values) or out + row * out_stride
// (a dense gradient).
template <typename scalar_t>
void row_sums(const Touched& t, const float* g, const float* Q, int64_t D, int64_t off, int64_t d, int64_t K,
              scalar_t* out, bool at_row) {
  at::parallel_for(0, int64_t(t.rows.size()), 64, [&](int64_t s0, int64_t s1) {
    std::vector<float> sum(static_cast<size_t>(d));
    for (int64_t s = s0; s < s1; ++s) {
      std::fill(sum.begin(), sum.end(), 0.f);
      for (int64_t i = t.seg[size_t(s)]; i < t.seg[size_t(s) + 1]; ++i) {
        const int64_t e = t.entries[size_t(i)];
        const float w = g[e];
        const float* q = Q + (e / K) * D + off;
        for (int64_t c = 0; c < d; ++c) sum[size_t(c)] += w * q[c];
      }
      scalar_t* o = out + (at_row ? t.rows[size_t(s)] : s) * d;
      for (int64_t c = 0; c < d; ++c) o[c] = static_cast<scalar_t>(sum[size_t(c)]);
    }
  });
}

// (R = B*T, indices (R, k), grad * scale (R, k) float32, query (R, d) float32), contiguous.
std::tuple<int64_t, at::Tensor, at::Tensor, at::Tensor> selection(const at::Tensor& grad, const at::Tensor& query,
                                                                  const at::Tensor& indices, const Shape& s,
                                                                  int64_t K, double scale) {
  const int64_t R = s.B * s.T;
  TORCH_CHECK_VALUE(indices.numel() == R * K, "indices must have B*T=", R, " rows of k, got ", indices.sizes());
  return {R, indices.reshape({R, K}).contiguous(), (grad.reshape({R, K}).to(at::kFloat) * scale).contiguous(),
          query.reshape({R, s.d}).to(at::kFloat).contiguous()};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> topk_attention_embedding_backward_cpu(
    const at::Tensor& grad, const at::Tensor& query, at::TensorList tables, at::TensorList ids,
    const at::Tensor& indices, double scale, const Opt& offsets, bool sparse, bool need_tables) {
  const int64_t K = check_selection("topk_attention_embedding_backward", grad, query, indices);
  const Shape s = check_embedding_inputs(query, tables, ids, K, std::nullopt, scale, std::nullopt, offsets,
                                         /*check_length_values=*/false);
  const auto [R, idx, G, Q] = selection(grad, query, indices, s, K, scale);
  const at::Tensor starts = jagged_starts(offsets, s);
  const float* g = G.const_data_ptr<float>();
  at::Tensor acc = at::zeros({R, s.d}, query.options().dtype(at::kFloat));
  std::vector<at::Tensor> out_rows, out_values;
  int64_t off = 0;
  for (size_t f = 0; f < tables.size(); ++f) {
    const at::Tensor t = tables[f].stride(1) == 1 ? tables[f] : tables[f].contiguous();
    const at::Tensor& i = ids[f];
    const Ids fid{i.const_data_ptr(), i.scalar_type() == at::kLong, i.dim() == 2 ? i.stride(0) : 0, i.stride(-1)};
    const int64_t n = t.size(0), d = t.size(1);
    const std::vector<int64_t> rows = selected_rows(idx.const_data_ptr<int64_t>(), R, s.T, K, fid, n,
                                                    starts.defined() ? starts.const_data_ptr<int64_t>() : nullptr, s.L);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "embedding_backward_cpu", [&] {
      query_grad<scalar_t>(g, rows, t.const_data_ptr<scalar_t>(), t.stride(0), d, off, s.d, R, K,
                           acc.mutable_data_ptr<float>());
      if (!need_tables) return;
      const Touched touch = touched(rows);
      if (sparse) {
        at::Tensor values = at::empty({int64_t(touch.rows.size()), d}, t.options());
        row_sums<scalar_t>(touch, g, Q.const_data_ptr<float>(), s.d, off, d, K, values.mutable_data_ptr<scalar_t>(),
                           false);
        out_rows.push_back(at::tensor(touch.rows, t.options().dtype(at::kLong)));
        out_values.push_back(values);
      } else {
        at::Tensor dense = at::zeros({n, d}, t.options());
        row_sums<scalar_t>(touch, g, Q.const_data_ptr<float>(), s.d, off, d, K, dense.mutable_data_ptr<scalar_t>(),
                           true);
        out_rows.push_back(at::empty({0}, t.options().dtype(at::kLong)));
        out_values.push_back(dense);
      }
    });
    off += d;
  }
  return {acc.reshape(query.sizes()).to(query.scalar_type()), out_rows, out_values};
}

std::tuple<at::Tensor, at::Tensor> topk_attention_backward_cpu(const at::Tensor& grad, const at::Tensor& query,
                                                               const at::Tensor& keys, const at::Tensor& indices,
                                                               double scale, const Opt& offsets, bool need_keys) {
  const int64_t K = check_selection("topk_attention_backward", grad, query, indices);
  const Shape s = check_inputs(query, keys, K, std::nullopt, std::nullopt, offsets, /*check_length_values=*/false);
  const auto [R, idx, G, Q] = selection(grad, query, indices, s, K, scale);
  const at::Tensor flat = keys.contiguous().reshape({-1, s.d});  // (B*L, d), jagged (N, d)
  const int64_t n = flat.size(0);
  std::vector<int64_t> rows(size_t(R * K));
  {
    const int64_t* ix = idx.const_data_ptr<int64_t>();
    const at::Tensor starts = jagged_starts(offsets, s);
    const int64_t* st = starts.defined() ? starts.const_data_ptr<int64_t>() : nullptr;
    at::parallel_for(0, R, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / s.T;
        for (int64_t kk = 0; kk < K; ++kk) {
          const int64_t j = ix[r * K + kk];
          rows[size_t(r * K + kk)] = j < 0 || (st ? n == 0 : j >= s.L) ? -1
                                     : st ? std::min(st[b] + j, n - 1) : b * s.L + j;
        }
      }
    });
  }
  const float* g = G.const_data_ptr<float>();
  at::Tensor acc = at::zeros({R, s.d}, query.options().dtype(at::kFloat));
  const bool fp8 = keys.scalar_type() == at::kFloat8_e4m3fn;  // quantised keys take no gradient
  at::Tensor grad_keys = need_keys && !fp8 ? at::zeros(keys.sizes(), keys.options()) : at::empty({0}, keys.options());
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kFloat8_e4m3fn, keys.scalar_type(),
                                  "topk_attention_backward_cpu", [&] {
    query_grad<scalar_t>(g, rows, flat.const_data_ptr<scalar_t>(), s.d, s.d, 0, s.d, R, K,
                         acc.mutable_data_ptr<float>());
    if (grad_keys.numel() == 0) return;
    if constexpr (!std::is_same_v<scalar_t, at::Float8_e4m3fn>) {
      row_sums<scalar_t>(touched(rows), g, Q.const_data_ptr<float>(), s.d, 0, s.d, K,
                         grad_keys.mutable_data_ptr<scalar_t>(), true);
    }
  });
  return {acc.reshape(query.sizes()).to(query.scalar_type()), grad_keys};
}

}  // namespace

TORCH_LIBRARY_IMPL(dare, CPU, m) {
  m.impl("topk_attention_embedding_backward", &topk_attention_embedding_backward_cpu);
  m.impl("topk_attention_backward", &topk_attention_backward_cpu);
}

}  // namespace dare
