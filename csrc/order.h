// Order-preserving packing of (score, position) into one 64-bit key, shared by
// the CPU and CUDA kernels. A larger key ranks higher: NaN above +inf, then by
// score, then by *lower* position, which gives the contract's deterministic
// ordering with a single unsigned comparison.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DARE_HD __host__ __device__ __forceinline__
#else
#define DARE_HD inline
#endif

namespace dare {

DARE_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
#endif
}

DARE_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
#endif
}

// Monotone map float -> uint32. Every NaN becomes the maximum, and -0 becomes +0
// so that the two zeros tie (and are then ordered by position).
// Written as selects, not branches: it sits on the GPU kernels' per-key path.
DARE_HD uint32_t score_key(float x) {
  uint32_t u = float_bits(x);
  u = u == 0x80000000u ? 0u : u;
  const uint32_t key = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return x != x ? 0xFFFFFFFFu : key;
}

DARE_HD float key_score(uint32_t key) {
  return bits_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

DARE_HD uint64_t pack(float score, uint32_t pos) {
  return (uint64_t(score_key(score)) << 32) | uint64_t(~pos);
}

DARE_HD float packed_score(uint64_t p) { return key_score(uint32_t(p >> 32)); }

DARE_HD int64_t packed_pos(uint64_t p) { return int64_t(~uint32_t(p)); }

}  // namespace dare
