// Fused CUDA kernel of topk_attention_embedding: ids -> table rows -> scores
// -> exact top-k in one pass, one launch, never writing the (B, L, d) keys.
//
// A key is `units` vectors of UB bytes across its F fields' rows. A group of
// G lanes scores one key (lane l loads vector l of the key: each lane knows
// its field, its table and its offset in the row before the loop), so a warp
// round scores 32 / G keys whose ids are consecutive (coalesced id loads; the
// lanes of a group read the same id, one transaction) and whose rows are
// independent random vector loads. The stream is software-pipelined: the ids
// of tile t + 2 and the rows of tile t + 1 are in flight while tile t is
// scored, so the id -> row dependency costs no exposed latency. A group's
// partial dot products meet in a butterfly of G / 2 .. 1 shuffles: the same
// order for every key, so a key's score depends on its ids alone (duplicates
// tie, ordered by position). An id out of [0, n) is never read: its vector
// reads as NaN, so the key scores NaN.
//
// Selection, split rows and the merge are the streaming kernel's (select.cuh).
#pragma once

#include <cstdint>
#include <type_traits>

#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../order.h"
#include "kernels.h"
#include "select.cuh"
#include "vec.cuh"

namespace dare {
namespace {

template <int UB>
struct UnitOf;
template <>
struct UnitOf<16> {
  using type = uint4;
  static constexpr int W = 4;
};
template <>
struct UnitOf<8> {
  using type = uint2;
  static constexpr int W = 2;
};
template <>
struct UnitOf<4> {
  using type = uint32_t;
  static constexpr int W = 1;
};

__device__ __forceinline__ void words(const uint4& v, uint32_t* w) {
  w[0] = v.x;
  w[1] = v.y;
  w[2] = v.z;
  w[3] = v.w;
}
__device__ __forceinline__ void words(const uint2& v, uint32_t* w) {
  w[0] = v.x;
  w[1] = v.y;
}
__device__ __forceinline__ void words(const uint32_t& v, uint32_t* w) { w[0] = v; }

// A vector of NaNs of type T (an out-of-range id's row).
template <typename T>
__device__ __forceinline__ uint32_t nan_word() {
  if constexpr (std::is_same_v<T, float>) return 0x7FC00000u;
  else if constexpr (std::is_same_v<T, __half>) return 0x7E007E00u;
  else return 0x7FC07FC0u;
}
template <typename U>
__device__ __forceinline__ U fill_unit(uint32_t w) {
  if constexpr (std::is_same_v<U, uint4>) return make_uint4(w, w, w, w);
  else if constexpr (std::is_same_v<U, uint2>) return make_uint2(w, w);
  else return w;
}

// Elements of T in the words of one vector, as floats, in memory order.
template <typename T, int W>
__device__ __forceinline__ void unit_to_float(const uint32_t* w, float* f) {
#pragma unroll
  for (int i = 0; i < W; ++i) {
    if constexpr (std::is_same_v<T, float>) {
      f[i] = __uint_as_float(w[i]);
    } else {
      const float2 p = pair_to_float2(w[i], T());
      f[2 * i] = p.x;
      f[2 * i + 1] = p.y;
    }
  }
}

// Two keys per lane group per tile, so that the rows of two tiles in flight fit
// the register cap of kCtasPerSm CTAs per SM (64 registers): the occupancy, not
// deeper buffering, keeps enough loads in flight (H200, B = 1024, L = 10000,
// bf16, 1M rows, d = 16 / 32 / 128: 0.191 / 0.337 / 1.101 ms; 4 keys at 2 CTAs
// per SM 0.287 / 0.515 / 1.752 ms; cp.async staging of 4 tiles at 2 CTAs per SM
// 0.321 / 0.563 / 1.909 ms).
template <typename T, int UB, bool MASKED>
__global__ void __launch_bounds__(kThreads, kCtasPerSm) embedding_kernel(EmbedParams ep) {
  using Unit = typename UnitOf<UB>::type;
  constexpr int W = UnitOf<UB>::W;                  // 32-bit words per vector
  constexpr int EPU = UB / int(sizeof(T));          // elements per vector
  constexpr int U = 2;                              // keys per lane group per tile
  const Params& p = ep.base;
  __shared__ SelectShared sh;
  __shared__ Stream st;
  const SpanCta s = begin_span(p, st);

  const int G = ep.group;
  const int lane = threadIdx.x % 32, gl = lane % G;
  const int per_round = kThreads / G;  // keys per round of the CTA
  const int key0 = (threadIdx.x / 32) * (32 / G) + lane / G;
  const int tile = per_round * U;

  // This lane's vector of every key: its field's table, id stream and query part.
  const bool has = gl < ep.units;
  const Unit* table = nullptr;
  const char* row_ids = nullptr;
  int64_t n_rows = 0, sl = 0;
  int units = 0, off = 0;
  bool ids64 = false;
#pragma unroll
  for (int f = 0; f < kMaxFields; ++f) {
    const EmbedField& fd = ep.fields[f];
    if (f < ep.F && has && gl >= fd.start && gl < fd.start + fd.units) {
      table = static_cast<const Unit*>(fd.table);
      ids64 = fd.ids64;
      // Jagged ids: row b's values start at position row_start of the (N,) stream.
      const int64_t first = p.offsets ? row_start(p, s.b) * fd.stride_l : s.b * fd.stride_b;
      row_ids = static_cast<const char*>(fd.ids) + first * (ids64 ? 8 : 4);
      n_rows = fd.n;
      sl = fd.stride_l;
      units = fd.units;
      off = gl - fd.start;
    }
  }
  float qr[EPU];
  const T* q = static_cast<const T*>(p.query) + s.row * p.d + int64_t(gl) * EPU;
#pragma unroll
  for (int e = 0; e < EPU; ++e) qr[e] = has ? to_float(q[e]) : 0.f;

  const int n = s.n;
  const char* ids = row_ids + s.start * sl * (ids64 ? 8 : 4);
  // A compile-time switch, as in topk_kernel: the unmasked kernel keeps its registers.
  const bool* mk = MASKED ? row_mask(p, s.b, s.start) : nullptr;
  // ids: -1 no key (past the span, masked out, or a padding lane: never read), -2 out of range.
  auto load_ids = [&](int j0, int64_t (&dst)[U]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = j0 + u * per_round + key0;
      int64_t id = -1;
      if (has && j < n && kept(mk, p.mask_sl, j)) {
        id = ids64 ? int64_t(__ldg(reinterpret_cast<const long long*>(ids) + j * sl))
                   : int64_t(__ldg(reinterpret_cast<const int*>(ids) + j * sl));
        id = (id < 0 || id >= n_rows) ? -2 : id;
      }
      dst[u] = id;
    }
  };
  auto load_rows = [&](const int64_t (&id)[U], Unit (&dst)[U]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      dst[u] = id[u] >= 0 ? __ldg(table + id[u] * units + off)
                          : fill_unit<Unit>(id[u] == -2 ? nan_word<T>() : 0u);
    }
  };

  int64_t ids_next[U];
  Unit cur[U], nxt[U];
  load_ids(0, ids_next);
  load_rows(ids_next, cur);
  load_ids(tile, ids_next);
  for (int j0 = 0; j0 < n; j0 += tile) {
    if (j0 + tile < n) load_rows(ids_next, nxt);           // tile t + 1
    if (j0 + 2 * tile < n) load_ids(j0 + 2 * tile, ids_next);  // tile t + 2
    const float bound = bound_score(st);
    uint32_t end = 0;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      uint32_t w[W];
      words(cur[u], w);
      float f[EPU];
      unit_to_float<T, W>(w, f);
      float acc = 0.f;
#pragma unroll
      for (int e = 0; e < EPU; ++e) acc = fmaf(qr[e], f[e], acc);
      for (int m = 16; m >= 1; m /= 2)
        if (m < G) acc += __shfl_xor_sync(0xFFFFFFFFu, acc, m);
      const int j = j0 + u * per_round + key0;
      // The mask byte again (an L1 hit: load_ids read it two tiles ago), not a flag
      // carried in registers through the pipeline.
      offer(gl == 0 && j < n && kept(mk, p.mask_sl, j), acc * p.scale, uint32_t(s.start + j), bound, s.buf, st, &end);
    }
    end_tile(p, end, tile, s.buf, s.cand, st, sh);
#pragma unroll
    for (int u = 0; u < U; ++u) cur[u] = nxt[u];
  }
  finish_row(p, s.row, s.c, s.buf, s.cand, st, sh);
}

// The keys of the many-targets path: key p = [table_f[ids_f(p)]]_f for the
// `positions` positions of B rows of L (jagged: the N of the stream, L = N), one
// thread per UB-byte vector (consecutive threads: consecutive vectors of a key,
// then consecutive keys: coalesced writes). An id out of [0, n) writes a NaN
// vector, as the fused kernel reads it.
template <typename T, int UB>
__global__ void gather_keys_kernel(EmbedParams ep, int64_t positions, int64_t L, void* keys) {
  using Unit = typename UnitOf<UB>::type;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= positions * ep.units) return;
  const int64_t pos = i / ep.units;
  const int u = int(i - pos * ep.units);
  const int64_t b = pos / L, j = pos - b * L;
#pragma unroll
  for (int f = 0; f < kMaxFields; ++f) {
    const EmbedField& fd = ep.fields[f];
    if (f < ep.F && u >= fd.start && u < fd.start + fd.units) {
      const int64_t at = b * fd.stride_b + j * fd.stride_l;
      const int64_t id = fd.ids64 ? int64_t(__ldg(static_cast<const long long*>(fd.ids) + at))
                                  : int64_t(__ldg(static_cast<const int*>(fd.ids) + at));
      static_cast<Unit*>(keys)[i] = id >= 0 && id < fd.n
                                        ? __ldg(static_cast<const Unit*>(fd.table) + id * fd.units + (u - fd.start))
                                        : fill_unit<Unit>(nan_word<T>());
    }
  }
}

}  // namespace

template <typename T, int UB>
void launch_ub(const EmbedParams& p, dim3 grid, size_t smem, cudaStream_t stream) {
  if (p.base.mask != nullptr) launch_with_smem(embedding_kernel<T, UB, true>, grid, smem, stream, p);
  else launch_with_smem(embedding_kernel<T, UB, false>, grid, smem, stream, p);
}

template <typename T>
void launch_embedding(const EmbedParams& p, int unit_bytes, int64_t rows, size_t smem, cudaStream_t stream) {
  const dim3 grid = span_grid(p.base, rows);
  if (unit_bytes == 16) launch_ub<T, 16>(p, grid, smem, stream);
  else if (unit_bytes == 8) launch_ub<T, 8>(p, grid, smem, stream);
  else launch_ub<T, 4>(p, grid, smem, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_gather_keys(const EmbedParams& p, int unit_bytes, int64_t positions, int64_t L, void* keys,
                        cudaStream_t stream) {
  const int64_t threads = positions * p.units;
  if (threads == 0) return;
  const dim3 grid(unsigned((threads + kThreads - 1) / kThreads));
  if (unit_bytes == 16) gather_keys_kernel<T, 16><<<grid, kThreads, 0, stream>>>(p, positions, L, keys);
  else if (unit_bytes == 8) gather_keys_kernel<T, 8><<<grid, kThreads, 0, stream>>>(p, positions, L, keys);
  else gather_keys_kernel<T, 4><<<grid, kThreads, 0, stream>>>(p, positions, L, keys);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace dare
