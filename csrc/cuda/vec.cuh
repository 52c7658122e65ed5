// Loading keys: 16-byte vectors -> float32, shared by the CUDA kernels.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "topk_kernel.h"

namespace dare {
namespace {

// Elements per 16-byte load and their conversion: float here, 16-bit types below.
template <typename T>
struct Vec;

template <>
struct Vec<float> {
  static constexpr int N = 4;
  __device__ __forceinline__ static void to_float(const uint4& v, float* f) {
    f[0] = __uint_as_float(v.x);
    f[1] = __uint_as_float(v.y);
    f[2] = __uint_as_float(v.z);
    f[3] = __uint_as_float(v.w);
  }
};

// Two packed 16-bit values (the lower-addressed one in the low half) as floats.
__device__ __forceinline__ float2 pair_to_float2(uint32_t w, __nv_bfloat16) {
  return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xFFFF0000u));
}
__device__ __forceinline__ float2 pair_to_float2(uint32_t w, __half) {
  return __half22float2(*reinterpret_cast<const __half2*>(&w));
}

template <typename T>  // __nv_bfloat16, __half
struct Vec {
  static constexpr int N = 8;
  __device__ __forceinline__ static void to_float(const uint4& v, float* f) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 p = pair_to_float2(w[i], T());
      f[2 * i] = p.x;
      f[2 * i + 1] = p.y;
    }
  }
};

template <typename T>
__device__ __forceinline__ float to_float(T x) {
  return static_cast<float>(x);
}
template <>
__device__ __forceinline__ float to_float(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <>
__device__ __forceinline__ float to_float(__half x) {
  return __half2float(x);
}

__device__ __forceinline__ int64_t row_length(const Params& p, int64_t b) {
  if (p.lengths == nullptr) return p.L;
  const int64_t len = p.lengths[b];
  return len < 0 ? 0 : (len > p.L ? p.L : len);
}

}  // namespace
}  // namespace dare
