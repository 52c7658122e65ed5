// The CUDA implementation of dare::topk_attention_embedding, host side: checks,
// the vector width the tables allow, the launch plan (plan.h), and the
// looked-up path for what the fused kernel does not take (k > kMaxK, keys wider
// than kMaxUnits vectors, 16-bit fields of odd width). Plain C++; the kernel is
// in embedding_kernel.cuh.
#include <algorithm>
#include <cstdlib>
#include <cstdint>
#include <limits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include "../check.h"
#include "kernels.h"
#include "plan.h"

namespace dare {
namespace {

// dare::topk_attention, which scores keys given as a tensor.
const c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t,
                                                                  const Opt&, double, const Opt&, const Opt&)>&
dense_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("dare::topk_attention", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t,
                                                                       const Opt&, double, const Opt&, const Opt&)>();
  return op;
}

// Exact for any shape: the keys looked up (an out-of-range id's row reads as
// NaN, as in the kernel: at a position that takes no part it is never selected),
// then topk_attention, in the same layout.
std::tuple<at::Tensor, at::Tensor> looked_up(const at::Tensor& query, at::TensorList tables, at::TensorList ids,
                                             int64_t k, const Opt& lengths, double scale, const Opt& mask,
                                             const Opt& offsets, const Shape& s) {
  std::vector<at::Tensor> parts;
  for (size_t f = 0; f < tables.size(); ++f) {
    const at::Tensor i = (s.jagged ? ids[f] : ids[f].expand({s.B, s.L})).to(at::kLong);
    const at::Tensor ok = (i >= 0) & (i < tables[f].size(0));
    const at::Tensor rows = tables[f].index_select(0, at::where(ok, i, at::zeros_like(i)).reshape(-1));
    std::vector<int64_t> shape(i.sizes().begin(), i.sizes().end());
    shape.push_back(tables[f].size(1));
    parts.push_back(at::where(ok.unsqueeze(-1), rows.view(shape),
                              at::full({}, std::numeric_limits<float>::quiet_NaN(), rows.options())));
  }
  return dense_op().call(query, at::cat(parts, -1), k, lengths, scale, mask, offsets);
}

std::tuple<at::Tensor, at::Tensor> topk_attention_embedding_cuda(const at::Tensor& query, at::TensorList tables,
                                                                 at::TensorList ids, int64_t k, const Opt& lengths,
                                                                 double scale, const Opt& mask, const Opt& offsets,
                                                                 bool /*sparse: the backward's*/) {
  const Shape s = check_embedding_inputs(query, tables, ids, k, lengths, scale, mask, offsets,
                                         /*check_length_values=*/false);
  const c10::cuda::CUDAGuard guard(query.device());
  const int64_t rows = s.B * s.T;
  if (rows == 0) return empty_outputs(query, s, k);

  // The widest vector (16, 8 or 4 bytes) that divides every field's row and
  // table address: 16-bit fields of odd width take the looked-up path.
  const int64_t F = int64_t(tables.size());
  std::vector<at::Tensor> tabs;
  int unit = 16;
  for (int64_t f = 0; f < F; ++f) {
    tabs.push_back(tables[f].contiguous());
    const int64_t row_bytes = tabs[f].size(1) * tabs[f].element_size();
    const auto addr = reinterpret_cast<uintptr_t>(tabs[f].const_data_ptr());
    while (unit >= 4 && (row_bytes % unit != 0 || addr % unit != 0)) unit /= 2;
  }
  int units = 0;
  if (unit >= 4)
    for (const at::Tensor& t : tabs) units += int(t.size(1) * t.element_size() / unit);
  if (unit < 4 || units > kMaxUnits || k > kMaxK)
    return looked_up(query, tables, ids, k, lengths, scale, mask, offsets, s);

  EmbedParams ep{};
  int start = 0;
  for (int64_t f = 0; f < F; ++f) {
    EmbedField& fd = ep.fields[f];
    const at::Tensor& i = ids[f];
    fd.table = tabs[f].const_data_ptr();
    fd.ids = i.const_data_ptr();
    fd.ids64 = i.scalar_type() == at::kLong;
    fd.n = tabs[f].size(0);
    fd.stride_b = i.dim() == 2 ? i.stride(0) : 0;
    fd.stride_l = i.stride(-1);
    fd.units = int(tabs[f].size(1) * tabs[f].element_size() / unit);
    fd.start = start;
    start += fd.units;
  }
  ep.F = int(F);
  ep.units = units;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  // Many targets of one history (serving: T candidates of a user): the fused kernel
  // would gather every key's rows again for each target. Instead the keys are
  // gathered once (one launch; NaN where an id is out of range, as the fused kernel
  // reads it) and the dense op scores them: each row's keys read once per group of
  // targets, on the tensor cores where it takes 16-bit keys. Its float32 sums run in
  // its own order (docs/contract.md). Ids shared by every row ((L,)) are gathered per
  // row all the same. DARE_CUDA_IDS_GATHER=0 turns it off (to measure).
  static const bool gather = [] {
    const char* env = std::getenv("DARE_CUDA_IDS_GATHER");
    return !(env && std::atoll(env) == 0);
  }();
  const int64_t positions = s.jagged ? ids[0].size(0) : s.B * s.L;
  if (gather && s.T >= kMinTargets && positions * units * unit <= kGatherMaxBytes) {
    at::Tensor keys = s.jagged ? at::empty({positions, s.d}, query.options())
                               : at::empty({s.B, s.L, s.d}, query.options());
    switch (query.scalar_type()) {
      case at::kFloat: launch_gather_keys<float>(ep, unit, positions, s.jagged ? positions : s.L,
                                                 keys.mutable_data_ptr(), stream); break;
      case at::kHalf: launch_gather_keys<__half>(ep, unit, positions, s.jagged ? positions : s.L,
                                                 keys.mutable_data_ptr(), stream); break;
      case at::kBFloat16: launch_gather_keys<__nv_bfloat16>(ep, unit, positions, s.jagged ? positions : s.L,
                                                            keys.mutable_data_ptr(), stream); break;
      default: TORCH_CHECK(false, "topk_attention_embedding: unreachable dtype");
    }
    return dense_op().call(query, keys, k, lengths, scale, mask, offsets);
  }

  auto [scores, indices] = empty_outputs(query, s, k);
  const at::Tensor Q = query.reshape({rows, s.d}).contiguous();
  at::Tensor len;
  if (lengths.has_value()) len = lengths->to(at::kLong).contiguous();
  int kpow2 = 1;
  while (kpow2 < k) kpow2 *= 2;
  ep.base = Params{nullptr, Q.const_data_ptr(), len.defined() ? len.const_data_ptr<int64_t>() : nullptr,
                   scores.mutable_data_ptr<float>(), indices.mutable_data_ptr<int64_t>(), nullptr, nullptr,
                   s.T, s.L, s.d, int(k), 0, 1, kpow2, 0, static_cast<float>(scale)};
  const at::Tensor off = set_layout(ep.base, mask, offsets);
  ep.group = 2;
  while (ep.group < units) ep.group *= 2;

  const at::Tensor workspace = plan_spans(ep.base, rows, plan_length(ep.base, s.B), int64_t(units) * unit, query);
  const size_t smem = smem_bytes(ep.base);
  switch (query.scalar_type()) {
    case at::kFloat: launch_embedding<float>(ep, unit, rows, smem, stream); break;
    case at::kHalf: launch_embedding<__half>(ep, unit, rows, smem, stream); break;
    case at::kBFloat16: launch_embedding<__nv_bfloat16>(ep, unit, rows, smem, stream); break;
    default: TORCH_CHECK(false, "topk_attention_embedding: unreachable dtype");
  }
  return {scores, indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(dare, CUDA, m) { m.impl("topk_attention_embedding", &topk_attention_embedding_cuda); }

}  // namespace dare
