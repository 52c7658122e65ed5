// The CPU kernels' vector ISAs: code marked DARE_AVX2 is compiled for
// AVX2/FMA/F16C/POPCNT, and each kernel's entry point twice (with it, and for the
// baseline ISA), picked once at run time: one binary is fast here and safe on
// older CPUs. On an AVX-512 CPU the kernels also call a few DARE_AVX512
// functions (use_avx512: the AVX2 variant's dim-major scan of many targets, and
// the selection's packing, partitions and sort in either variant).
#pragma once

#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>

#if defined(__x86_64__) && !defined(DARE_NO_SIMD)
#include <immintrin.h>
#endif

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

// DARE_NO_SIMD: compile as for a CPU that is not x86 (the portable code alone;
// the test suite's check that non-x86 builds compile).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(DARE_NO_SIMD)
#define DARE_X86 1
#define DARE_AVX2 __attribute__((target("avx2,fma,f16c,popcnt")))
#define DARE_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,popcnt")))
#else
#define DARE_AVX2  // pick_scan never picks run_avx2 here
#define DARE_AVX512
#endif

namespace dare {
namespace cpu {

// Scan::run<scalar_t, kAvx2>(args...) for the key dtype t. Always inlined, so
// that it and what it inlines are compiled for its caller's ISA.
template <typename Scan, bool kAvx2, typename... Args>
__attribute__((always_inline)) inline void run_dtype(at::ScalarType t, Args... args) {
  switch (t) {
    case at::kFloat: return Scan::template run<float, kAvx2>(args...);
    case at::kHalf: return Scan::template run<c10::Half, kAvx2>(args...);
    case at::kBFloat16: return Scan::template run<c10::BFloat16, kAvx2>(args...);
    default: TORCH_CHECK(false, "dare: unreachable CPU dtype");
  }
}

template <typename Scan, typename... Args>
DARE_AVX2 void run_avx2(at::ScalarType t, Args... args) { run_dtype<Scan, true, Args...>(t, args...); }

template <typename Scan, typename... Args>
void run_baseline(at::ScalarType t, Args... args) { run_dtype<Scan, false, Args...>(t, args...); }

// The vector code the kernels may call: 2 AVX-512 (F, VL, BW, DQ), 1 AVX2 (with
// FMA, F16C, POPCNT), 0 none (the same results in each). DARE_CPU_ISA=avx2 caps it
// at 1 and DARE_CPU_ISA=baseline at 0, so tests cover every level on one CPU.
inline int vector_level() {
  static const int level = [] {
    int hw = 0;
#ifdef DARE_X86
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
        __builtin_cpu_supports("popcnt")) {
      hw = 1;
      if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
        hw = 2;
    }
#endif
    const char* isa = std::getenv("DARE_CPU_ISA");
    if (isa && std::string(isa) == "baseline") return 0;
    if (isa && std::string(isa) == "avx2") return std::min(hw, 1);
    return hw;
  }();
  return level;
}

// Whether the AVX2 variant may also call the AVX-512 code.
inline bool use_avx512() { return vector_level() == 2; }

// f(std::integral_constant<int, D>) with D = d for the common key widths of
// the AVX2 code (its dim loops unrolled), else D = 0 (d at run time).
template <bool kAvx2, typename F>
__attribute__((always_inline)) inline void with_dim(int64_t d, F&& f) {
  if constexpr (kAvx2) {
    switch (d) {
      case 16: return f(std::integral_constant<int, 16>());
      case 32: return f(std::integral_constant<int, 32>());
      case 64: return f(std::integral_constant<int, 64>());
      case 128: return f(std::integral_constant<int, 128>());
      default: break;
    }
  }
  f(std::integral_constant<int, 0>());
}

// The variant of Scan's entry point that this CPU runs (vector_level();
// DARE_CPU_ISA=baseline forces the portable one, so tests cover it here).
template <typename Scan, typename... Args>
auto pick_scan() -> void (*)(at::ScalarType, Args...) {
#ifdef DARE_X86
  if (vector_level() >= 1) return run_avx2<Scan, Args...>;
#endif
  return run_baseline<Scan, Args...>;
}

}  // namespace cpu
}  // namespace dare
