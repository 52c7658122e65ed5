// The CUDA implementation of both ops' backward, host side (the kernel:
// backward_kernel.cu): checks, the gradients' buffers, one launch (two for per-slot
// rows). Plain C++. The forms of the tables' gradient are dare_kernels/_contract.py's:
// dense float32 sums rounded once; with sparse, one row and value per selected slot
// (_contract.per_slot: no host synchronisation, capturable in a CUDA graph).
#include <algorithm>
#include <cstdint>
#include <vector>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <torch/library.h>

#include "../check.h"
#include "kernels.h"

namespace dare {
namespace {

int columns(int64_t D) {
  int c = 1;
  while (c < D && c < kThreads) c *= 2;
  return c;
}

void launch(const BackwardParams& p, at::ScalarType t, cudaStream_t stream) {
  switch (t) {
    case at::kFloat: launch_backward<float>(p, stream); break;
    case at::kHalf: launch_backward<__half>(p, stream); break;
    case at::kBFloat16: launch_backward<__nv_bfloat16>(p, stream); break;
    case at::kFloat8_e4m3fn: launch_backward<__nv_fp8_e4m3>(p, stream); break;
    default: TORCH_CHECK(false, "backward: unreachable dtype");
  }
}

// What both ops share: (R, k) grad and indices, the float32 query, the jagged starts.
struct Selection {
  at::Tensor grad, indices, query, starts, grad_query;
  BackwardParams p{};
};

Selection selection(const at::Tensor& grad, const at::Tensor& query, const at::Tensor& indices, const Shape& s,
                    int64_t K, double scale, const Opt& offsets) {
  Selection sel;
  const int64_t R = s.B * s.T;
  TORCH_CHECK_VALUE(R < (int64_t(1) << 31), "backward: B*T must be below 2^31 (one CTA per target row)");
  sel.grad = grad.reshape({R, K}).to(at::kFloat).contiguous();
  sel.indices = indices.reshape({R, K}).contiguous();
  sel.query = query.reshape({R, s.d}).to(at::kFloat).contiguous();
  sel.starts = jagged_starts(offsets, s);
  sel.grad_query = at::empty({R, s.d}, query.options().dtype(at::kFloat));
  BackwardParams& p = sel.p;
  p.grad = sel.grad.const_data_ptr<float>();
  p.indices = sel.indices.const_data_ptr<int64_t>();
  p.query = sel.query.const_data_ptr<float>();
  p.starts = sel.starts.defined() ? sel.starts.const_data_ptr<int64_t>() : nullptr;
  p.grad_query = sel.grad_query.mutable_data_ptr<float>();
  p.R = R;
  p.T = s.T;
  p.K = K;
  p.D = s.d;
  p.L = s.L;
  p.scale = static_cast<float>(scale);
  p.cols = columns(s.d);
  return sel;
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> topk_attention_embedding_backward_cuda(
    const at::Tensor& grad, const at::Tensor& query, at::TensorList tables, at::TensorList ids,
    const at::Tensor& indices, double scale, const Opt& offsets, bool sparse, bool need_tables) {
  const int64_t K = check_selection("topk_attention_embedding_backward", grad, query, indices);
  const Shape s = check_embedding_inputs(query, tables, ids, K, std::nullopt, scale, std::nullopt, offsets,
                                         /*check_length_values=*/false);
  const c10::cuda::CUDAGuard guard(query.device());
  Selection sel = selection(grad, query, indices, s, K, scale, offsets);
  BackwardParams& p = sel.p;
  const int64_t F = int64_t(tables.size()), entries = p.R * K;
  p.F = int(F);
  p.mode = !need_tables ? TableGrad::kNone : sparse ? TableGrad::kPerSlot : TableGrad::kDense;
  std::vector<at::Tensor> tabs, rows, values;
  at::Tensor first;
  if (p.mode == TableGrad::kPerSlot) first = at::full({F}, -1, query.options().dtype(at::kLong));  // ~0 as uint64
  int off = 0;
  for (int64_t f = 0; f < F; ++f) {
    tabs.push_back(tables[f].contiguous());
    const at::Tensor& t = tabs.back();
    BackwardField& fd = p.fields[f];
    fd.table = t.const_data_ptr();
    fd.ids = ids[f].const_data_ptr();
    fd.ids64 = ids[f].scalar_type() == at::kLong;
    fd.n = t.size(0);
    fd.stride_b = ids[f].dim() == 2 ? ids[f].stride(0) : 0;
    fd.stride_l = ids[f].stride(-1);
    fd.d = int(t.size(1));
    fd.off = off;
    off += fd.d;
    if (p.mode == TableGrad::kDense) {
      values.push_back(at::zeros(t.sizes(), t.options().dtype(at::kFloat)));
      rows.push_back(at::empty({0}, t.options().dtype(at::kLong)));
      fd.values = values.back().mutable_data_ptr();
    } else if (p.mode == TableGrad::kPerSlot) {
      rows.push_back(at::empty({entries}, t.options().dtype(at::kLong)));
      values.push_back(at::empty({entries, t.size(1)}, t.options()));
      fd.rows = rows.back().mutable_data_ptr<int64_t>();
      fd.values = values.back().mutable_data_ptr();
      fd.first = reinterpret_cast<unsigned long long*>(first.mutable_data_ptr<int64_t>() + f);
    }
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  launch(p, query.scalar_type(), stream);
  if (p.mode == TableGrad::kPerSlot) launch_fix_slot_rows(p, stream);
  if (p.mode == TableGrad::kDense)
    for (int64_t f = 0; f < F; ++f) values[f] = values[f].to(tabs[f].scalar_type());
  return {sel.grad_query.reshape(query.sizes()).to(query.scalar_type()), rows, values};
}

std::tuple<at::Tensor, at::Tensor> topk_attention_backward_cuda(const at::Tensor& grad, const at::Tensor& query,
                                                                const at::Tensor& keys, const at::Tensor& indices,
                                                                double scale, const Opt& offsets, bool need_keys) {
  const int64_t K = check_selection("topk_attention_backward", grad, query, indices);
  const Shape s = check_inputs(query, keys, K, std::nullopt, std::nullopt, offsets, /*check_length_values=*/false);
  const c10::cuda::CUDAGuard guard(query.device());
  Selection sel = selection(grad, query, indices, s, K, scale, offsets);
  BackwardParams& p = sel.p;
  const at::Tensor flat = keys.contiguous();
  const bool fp8 = keys.scalar_type() == at::kFloat8_e4m3fn;  // quantised keys take no gradient
  // One target a padded row selects each key at most once: each entry's row is
  // written once, rounded once, into the zeroed gradient in the keys' dtype (a
  // fraction of float32's traffic for 16-bit keys). Else rows may share keys
  // (several targets, jagged rows the caller let overlap): float32 sums.
  const bool once = s.T == 1 && !offsets.has_value();
  p.F = 1;
  p.mode = !need_keys || fp8 ? TableGrad::kNone : once ? TableGrad::kWrite : TableGrad::kDense;
  at::Tensor grad_keys = p.mode == TableGrad::kNone ? at::empty({0}, keys.options())
                         : at::zeros(keys.sizes(), once ? keys.options() : keys.options().dtype(at::kFloat));
  BackwardField& fd = p.fields[0];
  fd.table = flat.const_data_ptr();
  p.keys = true;
  fd.n = flat.numel() / std::max<int64_t>(s.d, 1);
  fd.d = int(s.d);
  fd.off = 0;
  fd.values = grad_keys.numel() ? grad_keys.mutable_data_ptr() : nullptr;
  launch(p, keys.scalar_type(), c10::cuda::getCurrentCUDAStream());
  if (p.mode == TableGrad::kDense) grad_keys = grad_keys.to(keys.scalar_type());
  return {sel.grad_query.reshape(query.sizes()).to(query.scalar_type()), grad_keys};
}

}  // namespace

TORCH_LIBRARY_IMPL(dare, CUDA, m) {
  m.impl("topk_attention_embedding_backward", &topk_attention_embedding_backward_cuda);
  m.impl("topk_attention_backward", &topk_attention_backward_cuda);
}

}  // namespace dare
