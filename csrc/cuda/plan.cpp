#include "plan.h"

#include <algorithm>
#include <cstdlib>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

namespace dare {
namespace {

constexpr int64_t kSpanBytes = 64 * 1024;  // key bytes per CTA at least, when rows are split
constexpr int64_t kMaxSplits = 256;        // bounds the merge: splits * k keys for one CTA

// Keys per CTA at least when rows are split: kSpanBytes of keys, 256 to 1024
// keys (H200, B = 8, L = 10000, bf16: d = 16/32 fastest at 768-1024 keys per
// span, d = 128 at 256-384: a span's streaming time against the merge's
// splits * k keys). DARE_CUDA_MIN_SPAN overrides it (a tuning knob).
int64_t min_span(int64_t key_bytes) {
  static const int64_t forced = [] {
    const char* env = std::getenv("DARE_CUDA_MIN_SPAN");
    return env ? std::max<int64_t>(std::atoll(env), 64) : int64_t(0);
  }();
  if (forced) return forced;
  return std::clamp<int64_t>(kSpanBytes / key_bytes, 256, 1024);  // key_bytes >= 1: check_inputs wants d >= 1
}

}  // namespace

namespace {

// A device attribute, read once per device (the first 64 devices).
template <cudaDeviceAttr kAttr>
int device_attribute(int device) {
  static int cached[64] = {0};
  if (device < 64 && cached[device]) return cached[device];
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, kAttr, device));
  if (device < 64) cached[device] = n;
  return n;
}

}  // namespace

int sm_count(int device) { return device_attribute<cudaDevAttrMultiProcessorCount>(device); }

int smem_optin(int device) { return device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(device); }

at::Tensor set_layout(Params& p, const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& offsets) {
  at::Tensor off;
  if (offsets.has_value()) {
    off = offsets->to(at::kLong).contiguous();
    p.offsets = off.const_data_ptr<int64_t>();
  }
  if (mask.has_value()) {
    p.mask = mask->const_data_ptr<bool>();
    p.mask_sb = mask->stride(0);
    p.mask_sl = mask->stride(1);
  }
  return off;
}

int64_t plan_length(const Params& p, int64_t B) {
  return p.offsets ? std::max<int64_t>(1, (p.L + B - 1) / std::max<int64_t>(B, 1)) : p.L;
}

at::Tensor plan_spans(Params& p, int64_t rows, int64_t len, int64_t key_bytes, const at::Tensor& like) {
  const int64_t k = p.k, kpow2 = p.kpow2;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // Spans: one CTA per row when there are enough rows to fill the GPU, else
  // rows split into spans of at least min_span keys (and at least k: a
  // shorter span's list would hold more slots for the merge than keys) and
  // merged in-kernel.
  const int64_t slots = kCtasPerSm * int64_t(sm_count(like.get_device()));  // resident CTAs
  int64_t splits = 1;
  if (rows < slots / 2) {
    const int64_t least = std::max<int64_t>(min_span(key_bytes), k);
    splits = std::max<int64_t>(1, std::min({(slots + rows - 1) / rows, len / least, kMaxSplits}));
  }
  const int64_t span = std::max<int64_t>(1, (len + splits - 1) / splits);
  splits = std::max<int64_t>(1, (len + span - 1) / span);
  // Room for the k kept keys plus kpow2 + 768 new ones between folds (a tile
  // is <= 512 keys). Smaller lists fold sooner and cheaper; H200, B = 1024,
  // k = 128, bf16, ms at d = 16 / 32 / 128: 768 slots 0.101 / 0.162 / 0.587,
  // 1024 (this) 0.095 / 0.162 / 0.589, 1280 0.096 / 0.170 / 0.596, 2048 0.099 /
  // 0.167 / 0.594. A split row's span (up to 4096 keys) gets room for all its
  // keys: a span is short, so its list would fill about once, and that fold
  // is a select on the small batch's critical path (H200, L = 10000, k = 128,
  // bf16, graph replay: B = 8 d = 16 / 32 20.2 / 21.0 -> 15.9 / 17.0 us,
  // B = 1 d = 32 19.9 -> 15.8 us).
  int cap = 2 * kpow2 + 768;
  if (splits > 1) cap = std::max<int>(cap, int(std::min<int64_t>(span + 512, 4096)));
  p.span = int(span);
  p.splits = int(splits);
  p.cap = cap;

  at::Tensor workspace;  // partial lists, then one ticket per row
  if (splits > 1) {
    workspace = at::empty({rows * splits * k + (rows + 1) / 2}, like.options().dtype(at::kLong));
    int64_t* ws = workspace.mutable_data_ptr<int64_t>();
    p.partial = reinterpret_cast<uint64_t*>(ws);
    p.tickets = reinterpret_cast<uint32_t*>(ws + rows * splits * k);
    C10_CUDA_CHECK(cudaMemsetAsync(p.tickets, 0, size_t(rows) * sizeof(uint32_t), stream));
  }

  return workspace;
}

}  // namespace dare
