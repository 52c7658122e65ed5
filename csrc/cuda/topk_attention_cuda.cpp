// The CUDA implementation of dare::topk_attention, host side: input checks, the
// launch plan (rows split into spans when there are few; candidate-list size)
// and the exact ATen path for k above kMaxK. Plain C++ (no device code, so the
// host compiler alone builds it, without nvcc's second pass over ATen); the
// kernel is in topk_kernel.cuh.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <torch/library.h>

#include "../check.h"
#include "kernels.h"
#include "plan.h"

namespace dare {
namespace {

// A tuning knob's value from the environment (0: unset).
int64_t env_int(const char* name) {
  const char* env = std::getenv(name);
  return env ? std::atoll(env) : 0;
}

// Targets per CTA of the many-targets kernel: the most (up to 8: one MMA
// tile) that still gives 3/4 of the SMs a CTA; 0 (the streaming kernel,
// which splits rows) when even 2 would not, or when the query is not (B, T >=
// kMinTargets, d) with 16-bit keys of d in {16, 32, 64, 128} or float keys of
// d in {16, 32} (16-byte aligned key rows), or k > kMaxTargetsK. d = 16 takes
// it at 8 targets a CTA only: its keys are cheap to re-read from L2. H100, B =
// 1, T = 1024, L = 10000, k = 128, c5a3ae4, us: bf16 d = 16 G = 8 69.2,
// streaming 78.1; d = 32 G = 8 70.8, G = 4 81.5 (128 CTAs on 132 SMs beat
// 256); d = 128 138.8 and 136.0; float32 (3xTF32) d = 16 G = 8 84.3, G = 4
// 102.6, streaming 95.1; d = 32 133.5, 151.6, 211.5. DARE_CUDA_TARGETS=0 turns the path off
// and DARE_CUDA_TARGETS=G forces G targets per CTA, d = 16 included (knobs for
// tests and comparisons).
int targets_group(const Shape& s, int64_t k, const at::Tensor& K, bool vectorised) {
  static const int64_t forced = [] {
    const char* env = std::getenv("DARE_CUDA_TARGETS");
    return env ? std::clamp<int64_t>(std::atoll(env), 0, 8) : int64_t(-1);
  }();
  const auto t = K.scalar_type();
  const bool half = t == at::kHalf || t == at::kBFloat16;
  const bool shape = half ? (s.d == 16 || s.d == 32 || s.d == 64 || s.d == 128)
                          : t == at::kFloat && (s.d == 16 || s.d == 32);
  if (forced == 0 || s.T < kMinTargets || k > kMaxTargetsK || !vectorised || !shape) return 0;
  if (forced > 0) return int(forced);
  const int64_t sms = sm_count(K.get_device());
  for (int g = 8; g >= 2; g /= 2)
    if (4 * s.B * ((s.T + g - 1) / g) >= 3 * sms) return s.d == 16 && g < 8 ? 0 : g;
  return 0;
}

// Exact for any k: the reference's computation (dare_kernels/reference.py) on
// the GPU, the one large-k path of both GPU backends. float32 scores (-0 -> +0:
// both zeros tie), padding masked to -inf, a stable descending sort (NaN first,
// equal scores by position; padding after every valid -inf, being further
// right; masked-out positions sorted after every valid one), then the padded
// slots of short rows set to (-inf, -1). Jagged rows are padded first: the one
// path that reads the offsets on the host.
std::tuple<at::Tensor, at::Tensor> large_k(const at::Tensor& Q, at::Tensor K, int64_t k, at::Tensor len,
                                           double scale, Shape s, const Opt& mask, const at::Tensor& offsets) {
  if (offsets.defined()) {
    const at::Tensor start = offsets.narrow(0, 0, s.B).clamp(0, s.L);
    len = at::maximum(offsets.narrow(0, 1, s.B).clamp(0, s.L), start) - start;
    const int64_t Lp = std::max<int64_t>(s.B ? len.max().item<int64_t>() : 0, k);
    const at::Tensor index = (start.view({s.B, 1}) + at::arange(Lp, start.options()).view({1, Lp}))
                                 .clamp(0, std::max<int64_t>(s.L - 1, 0));
    K = s.L ? K.index_select(0, index.view(-1)).view({s.B, Lp, s.d}) : at::zeros({s.B, Lp, s.d}, K.options());
    s.L = Lp;
  }
  const at::Tensor scores = at::bmm(Q.view({s.B, s.T, s.d}).to(at::kFloat), K.to(at::kFloat).transpose(1, 2)) * scale + 0.0;
  at::Tensor valid = at::ones({s.B, 1, s.L}, K.options().dtype(at::kBool));
  if (len.defined()) {
    valid = at::arange(s.L, K.options().dtype(at::kLong)).view({1, 1, s.L}) < len.clamp(0, s.L).view({s.B, 1, 1});
  }
  if (mask.has_value()) valid = valid & mask->unsqueeze(1);
  const at::Tensor masked = scores.masked_fill(valid.logical_not(), -std::numeric_limits<float>::infinity());
  at::Tensor order = std::get<1>(at::sort(masked, /*stable=*/true, /*dim=*/-1, /*descending=*/true));
  if (mask.has_value()) {  // valid positions first, each side in the order above
    const at::Tensor rank = valid.logical_not().to(at::kInt).expand({s.B, s.T, s.L}).gather(-1, order);
    order = order.gather(-1, std::get<1>(at::sort(rank, /*stable=*/true, /*dim=*/-1, /*descending=*/false)));
  }
  order = order.narrow(-1, 0, k);
  const at::Tensor ok = valid.expand({s.B, s.T, s.L}).gather(-1, order);
  return {scores.gather(-1, order).masked_fill(ok.logical_not(), -std::numeric_limits<float>::infinity()),
          order.masked_fill(ok.logical_not(), -1)};
}

std::tuple<at::Tensor, at::Tensor> topk_attention_cuda(const at::Tensor& query, const at::Tensor& keys,
                                                       int64_t k, const Opt& lengths, double scale, const Opt& mask,
                                                       const Opt& offsets) {
  check_scale(scale);
  // Length and offset values are not read on the host (no sync, graph-capturable):
  // the kernels clamp them.
  const Shape s = check_inputs(query, keys, k, lengths, mask, offsets, /*check_length_values=*/false);
  const c10::cuda::CUDAGuard guard(keys.device());
  auto [scores, indices] = empty_outputs(keys, s, k);
  const int64_t rows = s.B * s.T;
  if (rows == 0) return {scores, indices};

  const at::Tensor K = keys.contiguous();
  const bool fp8 = K.scalar_type() == at::kFloat8_e4m3fn;  // the kernel takes a float32 query then
  const at::Tensor Q = query.reshape({rows, s.d}).to(fp8 ? at::kFloat : query.scalar_type()).contiguous();
  at::Tensor len;
  if (lengths.has_value()) len = lengths->to(at::kLong).contiguous();

  Params p{K.const_data_ptr(), Q.const_data_ptr(), len.defined() ? len.const_data_ptr<int64_t>() : nullptr,
           scores.mutable_data_ptr<float>(), indices.mutable_data_ptr<int64_t>(), nullptr, nullptr,
           s.T, s.L, s.d, int(k), 0, 1, 1, 0, static_cast<float>(scale)};
  const at::Tensor off = set_layout(p, mask, offsets);

  if (k > kMaxK) {
    auto [sc, ix] = large_k(Q, K, k, len, scale, s, mask, off);
    scores.copy_(sc.view(scores.sizes()));
    indices.copy_(ix.view(indices.sizes()));
    return {scores, indices};
  }

  int kpow2 = 1;
  while (kpow2 < k) kpow2 *= 2;
  const int64_t vec_bytes = 16;
  const bool vectorised = reinterpret_cast<uintptr_t>(K.const_data_ptr()) % vec_bytes == 0 &&
                          (s.d * int64_t(K.element_size())) % vec_bytes == 0;
  p.kpow2 = kpow2;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (int group = targets_group(s, k, K, vectorised)) {
    // List slots: kpow2 + 4 tiles (at least the streaming kernel's 2 * kpow2 + 768, and
    // kpow2 + a tile: the kernel's warp segments take the appends of M = (cap - kpow2) /
    // tile tiles between the warps' meetings, M >= 1). (Meeting after every tile, with the CTA-wide
    // selection: H200, B = 1, T = 1024, d = 32, k = 128: kpow2 + 384 slots 0.167 ms, 1024
    // 0.107, kpow2 + 1792 0.109.) DARE_CUDA_TARGETS_EXTRA=E makes it kpow2 + E.
    static const int64_t extra = env_int("DARE_CUDA_TARGETS_EXTRA");
    // DARE_CUDA_TARGETS_WARPS=16: 16 warps a CTA, not 8 (an A/B knob).
    static const int warps = env_int("DARE_CUDA_TARGETS_WARPS") == 16 ? 16 : 8;
    p.warps = warps;
    // DARE_CUDA_TARGETS_APPEND=segments: each warp appends to its own segment of a list
    // (no shared atomics; built without a GPU in session 19, not yet measured or tested
    // there), where the default has every warp append to a target's one list through a
    // shared atomic count. 16 warps always take the segments.
    static const bool segments = [] {
      const char* env = std::getenv("DARE_CUDA_TARGETS_APPEND");
      return env && std::string(env) == "segments";
    }();
    p.segments = segments || warps == 16;
    const int64_t tile = targets_tile(s.d * K.element_size(), warps);
    const int64_t least = kpow2 + tile + 32;  // the k kept keys and a tile
    const int64_t cap = std::max<int64_t>(least, extra > 0 ? kpow2 + extra
                                                           : std::max<int64_t>(2 * kpow2 + 768, kpow2 + 4 * tile));
    // The lists are the CTA's dynamic shared memory: within what the GPU lets a CTA opt
    // into (H100 227 KB; sm_86 / sm_89 99 KB), fewer slots, then fewer targets a CTA.
    const int64_t room = int64_t(smem_optin(K.get_device())) - int64_t(kMaxStaticSmem);
    while (group > 1 && group * least * int64_t(sizeof(uint64_t)) > room) group /= 2;
    p.group = group;
    p.cap = int(std::max<int64_t>(least, std::min<int64_t>(cap, room / (group * int64_t(sizeof(uint64_t))))));
    TORCH_CHECK(p.cap - kpow2 >= tile, "topk_attention: many-targets lists of ", p.cap, " slots hold no tile");
    const size_t smem = size_t(p.group) * p.cap * sizeof(uint64_t);  // the lists alone: a warp selects in place
    // The kernel reads the query as 32-bit words: a 16-bit query at an odd element offset is copied.
    at::Tensor Qa = Q;
    if (reinterpret_cast<uintptr_t>(Q.const_data_ptr()) % 4 != 0) {
      Qa = Q.clone();
      p.query = Qa.const_data_ptr();
    }
    switch (K.scalar_type()) {
      case at::kFloat: launch_targets<float>(p, s.B, smem, stream); break;
      case at::kHalf: launch_targets<__half>(p, s.B, smem, stream); break;
      default: launch_targets<__nv_bfloat16>(p, s.B, smem, stream);
    }
    return {scores, indices};
  }

  at::Tensor workspace = plan_spans(p, rows, plan_length(p, s.B), K.element_size() * s.d, keys);
  const size_t smem = smem_bytes(p);
  switch (K.scalar_type()) {
    case at::kFloat: launch_topk<float>(p, rows, smem, vectorised, stream); break;
    case at::kHalf: launch_topk<__half>(p, rows, smem, vectorised, stream); break;
    case at::kBFloat16: launch_topk<__nv_bfloat16>(p, rows, smem, vectorised, stream); break;
    case at::kFloat8_e4m3fn: launch_topk<__nv_fp8_e4m3>(p, rows, smem, vectorised, stream); break;
    default: TORCH_CHECK(false, "topk_attention: unreachable dtype");
  }
  return {scores, indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(dare, CUDA, m) { m.impl("topk_attention", &topk_attention_cuda); }

}  // namespace dare
