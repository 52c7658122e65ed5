// The interface between the op's host code (topk_attention_cuda.cpp) and the
// fused kernel (topk_kernel.cuh). The kernel is instantiated once per key dtype
// (topk_kernel_{f32,f16,bf16}.cu): the three compile in parallel, and none of
// them parses ATen.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace dare {

constexpr int kThreads = 256;   // per CTA
constexpr int kCtasPerSm = 4;   // the kernel's launch bounds: CTAs resident per SM
constexpr int kMaxK = 1024;     // larger k takes the ATen path

struct Params {
  const void* keys;        // (B, L, d) contiguous
  const void* query;       // (B*T, d) contiguous
  const int64_t* lengths;  // (B,) int64 or nullptr; clamped to [0, L]
  float* scores;           // (B*T, k)
  int64_t* indices;        // (B*T, k)
  uint64_t* partial;       // (B*T, splits, k) packed top-k lists (unsorted, zero-padded) when splits > 1
  uint32_t* tickets;       // (B*T,) zeroed before the launch when splits > 1
  int64_t T, L, d;
  int k, span, splits, kpow2, cap;  // cap: candidate-list slots
  float scale;
};

// Launches the kernel for keys of type T (float, __half or __nv_bfloat16) over
// rows * p.splits CTAs with `smem` bytes of dynamic shared memory (cap + kpow2
// packed keys), the d-specialised variant when `vectorised` (16-byte aligned
// rows), and checks the launch.
template <typename T>
void launch_topk(const Params& p, int64_t rows, size_t smem, bool vectorised, cudaStream_t stream);

}  // namespace dare
