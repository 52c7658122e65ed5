// CPU kernel of topk_attention_embedding: for each row, a chunk of behaviours'
// key rows is gathered by id (software-prefetched a few positions ahead: the
// rows of a large table are cache misses) into a small float buffer that stays
// in L1/L2, then every target of the work item scores the chunk (score.h, the
// dense op's scorer: a key gets the score topk_attention gives it) and offers
// it to its own top-k (select.h). The (B, L, d) keys are never built; a key
// row is read once per work item, not once per target. A work item is a row
// and a group of its targets, so that one row with many targets (serving)
// keeps every thread busy. Positions that take no part (mask, layout.h) are
// neither gathered nor checked: their ids may be anything.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "../check.h"
#include "isa.h"
#include "layout.h"
#include "score.h"
#include "select.h"

namespace dare {
namespace {

using cpu::kChunk;
using cpu::Layout;
using cpu::TopK;

constexpr int64_t kPrefetch = 64;  // positions ahead whose rows are prefetched

struct Field {
  const void* table;  // (n, d) rows of `stride` elements
  const void* ids;    // int32 or int64, element (b, j) at b * stride_b + j * stride_l (jagged: b = 0)
  bool ids64;
  int64_t n, d, stride, off, stride_b, stride_l;

  int64_t id(int64_t b, int64_t j) const {
    const int64_t i = b * stride_b + j * stride_l;
    return ids64 ? static_cast<const int64_t*>(ids)[i] : int64_t(static_cast<const int32_t*>(ids)[i]);
  }
};

struct Problem {
  Field fields[kMaxFields];
  int64_t F, T, D, k;
  int64_t group;           // targets of one row per work item
  const float* query;      // (B*T, D) float32
  Layout layout;
  float* scores;           // (B*T, k)
  int64_t* indices;        // (B*T, k)
  float scale;
};

// The first id found out of range (field, value), for the ValueError.
struct BadId {
  int64_t field = -1, value = 0;
};

template <typename scalar_t>
inline void gather_row(const Field& f, int64_t id, float* out) {
  const scalar_t* row = static_cast<const scalar_t*>(f.table) + id * f.stride;
  for (int64_t c = 0; c < f.d; ++c) out[c] = static_cast<float>(row[c]);
}

template <typename scalar_t>
inline void prefetch_row(const Field& f, int64_t id) {
  if (id >= 0 && id < f.n) {
    const char* p = reinterpret_cast<const char*>(static_cast<const scalar_t*>(f.table) + id * f.stride);
    for (int64_t o = 0; o < f.d * int64_t(sizeof(scalar_t)); o += 64) __builtin_prefetch(p + o);
  }
}

// Work items [begin, end): item i is row b = i / groups and its targets
// [t0, t0 + group).
template <typename scalar_t, bool kAvx2, int D>
void scan_rows(const Problem& p, int64_t begin, int64_t end, BadId* bad) {
  const int64_t groups = (p.T + p.group - 1) / p.group;
  std::vector<TopK> tops(std::min(p.group, p.T), TopK(p.k));
  std::vector<float> keys(kChunk * p.D);
  alignas(64) float buf[kChunk + 16];  // + 16: a vector scan's last block writes 16 scores
  bool keep[kChunk];
  std::vector<float> kt(cpu::dim_major<kAvx2>(p.group, p.D) ? p.D * kChunk : 0);
  const Layout& l = p.layout;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t b = item / groups, t0 = (item % groups) * p.group;
    const int64_t nt = std::min(p.group, p.T - t0);
    const float* q0 = p.query + (b * p.T + t0) * p.D;
    const int64_t len = l.len(b), start = l.start(b);
    for (int64_t t = 0; t < nt; ++t) tops[t].reset();
    for (int64_t j0 = 0; j0 < len; j0 += kChunk) {
      const int64_t n = std::min(kChunk, len - j0);
      // A chunk the mask leaves whole takes the plain offer. Masked-out slots
      // hold stale values: scored, never offered.
      const bool* kept = nullptr;
      if (l.mask) {
        const int64_t m = l.load_keep(b, j0, n, keep);
        if (m == 0) continue;
        if (m < n) kept = keep;
      }
      for (int64_t j = 0; j < n; ++j) {
        if (kept && !kept[j]) continue;
        const int64_t pos = j0 + j;
        const bool ahead = pos + kPrefetch < len && l.takes_part(b, pos + kPrefetch);
        float* key = keys.data() + j * p.D;
        for (int64_t fi = 0; fi < p.F; ++fi) {
          const Field& f = p.fields[fi];
          if (ahead) prefetch_row<scalar_t>(f, f.id(b, start + pos + kPrefetch));
          const int64_t id = f.id(b, start + pos);
          if (id < 0 || id >= f.n) {
            if (bad->field < 0) *bad = BadId{fi, id};
            std::fill(key + f.off, key + f.off + f.d, 0.f);
            continue;
          }
          gather_row<scalar_t>(f, id, key + f.off);
        }
      }
      cpu::scan_targets<kAvx2, D>(q0, nt, keys.data(), p.D, n, p.D, p.scale, tops.data(), j0, kept, buf, kt.data());
    }
    for (int64_t t = 0; t < nt; ++t)
      tops[t].finish(p.scores + (b * p.T + t0 + t) * p.k, p.indices + (b * p.T + t0 + t) * p.k);
  }
}

// The entry point cpu::pick_scan compiles for each ISA.
struct Scan {
  template <typename scalar_t, bool kAvx2>
  __attribute__((always_inline)) static void run(const Problem& p, int64_t begin, int64_t end, BadId* bad) {
    cpu::with_dim<kAvx2>(p.D, [&](auto D) { scan_rows<scalar_t, kAvx2, D.value>(p, begin, end, bad); });
  }
};

std::tuple<at::Tensor, at::Tensor> topk_attention_embedding_cpu(const at::Tensor& query, at::TensorList tables,
                                                                at::TensorList ids, int64_t k,
                                                                const Opt& lengths, double scale, const Opt& mask,
                                                                const Opt& offsets, bool /*sparse: the backward's*/) {
  const Shape s = check_embedding_inputs(query, tables, ids, k, lengths, scale, mask, offsets,
                                         /*check_length_values=*/true);
  auto [scores, indices] = empty_outputs(query, s, k);
  if (s.B * s.T == 0) return {scores, indices};

  Problem p{};
  p.F = int64_t(tables.size());
  std::vector<at::Tensor> hold;  // contiguous tables, int64 lengths / offsets: alive for the call
  int64_t off = 0;
  for (int64_t f = 0; f < p.F; ++f) {
    at::Tensor t = tables[f].stride(1) == 1 ? tables[f] : tables[f].contiguous();
    const at::Tensor& i = ids[f];
    hold.push_back(t);
    Field& fd = p.fields[f];
    fd.table = t.const_data_ptr();
    fd.n = t.size(0);
    fd.d = t.size(1);
    fd.stride = t.stride(0);
    fd.off = off;
    fd.ids = i.const_data_ptr();
    fd.ids64 = i.scalar_type() == at::kLong;
    fd.stride_b = i.dim() == 2 ? i.stride(0) : 0;
    fd.stride_l = i.stride(-1);
    off += fd.d;
  }
  const at::Tensor Q = query.reshape({s.B * s.T, s.d}).to(at::kFloat).contiguous();
  p.layout = cpu::make_layout(lengths, mask, offsets, s.L, hold);
  p.T = s.T;
  p.D = s.d;
  p.k = k;
  p.query = Q.const_data_ptr<float>();
  p.scores = scores.mutable_data_ptr<float>();
  p.indices = indices.mutable_data_ptr<int64_t>();
  p.scale = static_cast<float>(scale);

  const int64_t threads = std::max<int64_t>(at::get_num_threads(), 1);
  p.group = cpu::targets_per_item(s.B, s.T, k, threads);
  const int64_t items = s.B * ((s.T + p.group - 1) / p.group);

  static const auto scan = cpu::pick_scan<Scan, const Problem&, int64_t, int64_t, BadId*>();
  const at::ScalarType t = query.scalar_type();
  std::vector<BadId> bad(threads);
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    scan(t, p, begin, end, &bad[std::min<int64_t>(at::get_thread_num(), int64_t(bad.size()) - 1)]);
  });
  for (const BadId& e : bad) {
    if (e.field < 0) continue;
    TORCH_CHECK_VALUE(false, "topk_attention_embedding: ids[" + std::to_string(e.field) +
                                       "] values must be in [0, " + std::to_string(p.fields[e.field].n) +
                                       ") (rows of tables[" + std::to_string(e.field) + "]), got " +
                                       std::to_string(e.value));
  }
  return {scores, indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(dare, CPU, m) { m.impl("topk_attention_embedding", &topk_attention_embedding_cpu); }

}  // namespace dare
