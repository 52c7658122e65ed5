// Loading keys: 16-byte vectors -> float32, shared by the CUDA kernels.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "kernels.h"

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

// float8_e4m3fn keys: 16 dims a vector, converted in pairs (one cvt on sm_89+).
template <>
struct Vec<__nv_fp8_e4m3> {
  static constexpr int N = 16;
  __device__ __forceinline__ static void to_float(const uint4& v, float* f) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const __half2_raw r = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(w[i] >> (16 * h)), __NV_E4M3);
        const float2 p = __half22float2(*reinterpret_cast<const __half2*>(&r));
        f[4 * i + 2 * h] = p.x;
        f[4 * i + 2 * h + 1] = p.y;
      }
    }
  }
};

// The query's element type: the keys' own, but float32 with fp8 keys (the host
// converts the query, B·T·d values, once).
template <typename T>
struct QueryOf {
  using type = T;
};
template <>
struct QueryOf<__nv_fp8_e4m3> {
  using type = float;
};
template <typename T>
using query_t = typename QueryOf<T>::type;

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
template <>
__device__ __forceinline__ float to_float(__nv_fp8_e4m3 x) {
  return float(x);
}

// Row b's first key (jagged: clamp(offsets[b], 0, N)).
__device__ __forceinline__ int64_t row_start(const Params& p, int64_t b) {
  if (p.offsets == nullptr) return b * p.L;
  const int64_t s = p.offsets[b];
  return s < 0 ? 0 : (s > p.L ? p.L : s);
}

// Row b's keys, as the reference clamps them: lengths to [0, L]; jagged rows end
// at clamp(offsets[b + 1], start, N).
__device__ __forceinline__ int64_t row_length(const Params& p, int64_t b) {
  if (p.offsets != nullptr) {
    const int64_t s = row_start(p, b), e = p.offsets[b + 1];
    return (e < s ? s : (e > p.L ? p.L : e)) - s;
  }
  if (p.lengths == nullptr) return p.L;
  const int64_t len = p.lengths[b];
  return len < 0 ? 0 : (len > p.L ? p.L : len);
}

// Row b's mask from position `start` (nullptr: every position within the length takes part).
__device__ __forceinline__ const bool* row_mask(const Params& p, int64_t b, int64_t start) {
  return p.mask == nullptr ? nullptr : p.mask + b * p.mask_sb + start * p.mask_sl;
}

// Whether position j (< n) of a span whose mask is m takes part.
__device__ __forceinline__ bool kept(const bool* m, int64_t sl, int j) {
  return m == nullptr || __ldg(reinterpret_cast<const unsigned char*>(m) + int64_t(j) * sl) != 0;
}

}  // namespace
}  // namespace dare
