// Fused CUDA kernel: scores + exact top-k in one pass over the keys, one launch.
//
// Each CTA streams one row's keys (or one span of a split row) with 16-byte
// coalesced loads, the next tile's loads in flight while the current tile is
// scored (short keys: every lane ends with one key's score; long keys: G
// lanes share a key). A key whose score reaches the running bound (the
// k-th best so far) joins a candidate list in shared memory; when the list
// fills, a radix select cuts it back to the k best and raises the bound. For
// random scores the list fills once early and then rarely: only ~k·ln(n/k) of
// n keys beat the running k-th best, so the per-key cost is the dot product
// and one compare, with no pass over the scores. Keys are (score, position)
// packed into one order-preserving 64-bit integer (order.h), so every key is
// distinct and ties, NaN and padding need no special case.
//
// Few rows (B = 1..16): rows are split into spans so the GPU fills; each CTA
// leaves its partial top-k list, and the row's last CTA to finish (an atomic
// ticket) streams the other lists through the same filter, seeded with its own.
//
// k above kMaxK takes the reference computation on the GPU (float32 scores, a stable sort).
//
// This header holds the kernel and its launcher template; topk_kernel_*.cu
// instantiate it for one key dtype each.
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

// ---------------------------------------------------------------------------
// Streaming the keys of one span: scores, then offer.

// A tile's worth of 16-byte vectors in one thread's registers, and which of
// the keys it offers take part (bit a: round a's key; all set without a mask).
template <int A, int B>
struct Regs {
  uint4 v[A][B];
  uint32_t keep;
};

// Clears bit a of r.keep where round a's key j(a) < n is masked out; the mask
// bytes load with the tile's keys. A compile-time switch: the unmasked kernel
// keeps its 64 registers (a run-time one spilled 16-60 bytes a thread).
template <int A, bool MASKED, typename R, typename KeyOf>
__device__ __forceinline__ void load_keep(R& r, const bool* m, int64_t sl, int n, KeyOf j_of) {
  r.keep = ~0u;
  if constexpr (!MASKED) return;
#pragma unroll
  for (int a = 0; a < A; ++a) {
    const int j = j_of(a);
    if (j < n && !kept(m, sl, j)) r.keep &= ~(1u << a);
  }
}

// The tile loop of the vectorised paths: the next tile's loads (load(regs,
// j0, full): full = the whole tile exists, so no per-key checks) are issued
// before the current tile is scored and offered (offer_tile(regs, j0, bound,
// &end)); the list is folded between tiles.
template <int TILE, typename R, typename Load, typename OfferTile>
__device__ __forceinline__ void stream_tiles(const Params& p, int n, Load load, OfferTile offer_tile, uint64_t* buf,
                                             uint64_t* cand, Stream& st, SelectShared& sh) {
  R cur, nxt;
  load(cur, 0, std::false_type());
  for (int j0 = 0; j0 < n; j0 += TILE) {
    if (j0 + 2 * TILE <= n) load(nxt, j0 + TILE, std::true_type());
    else if (j0 + TILE < n) load(nxt, j0 + TILE, std::false_type());
    uint32_t end = 0;
    offer_tile(cur, j0, bound_score(st), &end);
    end_tile(p, end, TILE, buf, cand, st, sh);
    cur = nxt;
  }
}

// D > 0: d == D, 16-byte aligned rows, NVEC 16-byte vectors per key; both
// layouts below run the tile loop of stream_tiles.
//
// Short keys (NVEC <= 4: the DARE dims d = 16/32 in 16-bit types): each warp
// load instruction reads 512 contiguous bytes, lane l taking vector l, so a
// group of G = NVEC lanes holds one component of each of G keys; a butterfly
// reduce-scatter (G - 1 shuffles) leaves each lane the whole score of one key.
// Every lane then offers a key: no idle lanes, and the per-key cost is the
// dot product plus a compare.
template <typename T, int D, bool MASKED>
__device__ __forceinline__ void stream_span_short(const Params& p, const T* __restrict__ keys,
                                                  const query_t<T>* __restrict__ q, int n, uint32_t pos0, const bool* m,
                                                  uint64_t* buf, uint64_t* cand, Stream& st, SelectShared& sh) {
  constexpr int VN = Vec<T>::N;
  constexpr int G = D / VN;                  // vectors per key = lanes per group
  // Rounds of 32 keys per warp per tile: 512 keys a tile at most, which the
  // candidate list's room (plan.cpp: k kept + kpow2 + 768) assumes (G = 1, fp8
  // d = 16, at 4 rounds overflowed it when many scores tie the bound). fp8 at
  // G = 2 (d = 32) holds 16 query dims a lane: one round keeps it in 64 registers
  // (two spilled 16 bytes).
  constexpr int U = G == 4 || (VN == 16 && G == 2) ? 1 : 2;
  constexpr int WARPS = kThreads / 32;
  constexpr int TILE = WARPS * U * 32;
  static_assert(TILE <= 512, "plan.cpp sizes the candidate list for tiles of at most 512 keys");
  static_assert(G == 1 || G == 2 || G == 4, "short keys only");
  const int w = threadIdx.x / 32, l = threadIdx.x % 32, c = l % G;
  float qr[VN];
#pragma unroll
  for (int e = 0; e < VN; ++e) qr[e] = to_float(q[c * VN + e]);
  // Vector r of a round holds component c of round key r * (32 / G) + l / G.
  const uint4* base = reinterpret_cast<const uint4*>(keys) + w * 32 * G + l;
  const int key0 = w * 32 + l / G;
  using R = Regs<U, G>;
  auto load = [&](R& r, int j0, auto full) {
    const uint4* tile = base + int64_t(j0) * G;
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int v = 0; v < G; ++v) {
        const int j = j0 + u * WARPS * 32 + key0 + v * (32 / G);
        r.v[u][v] = full || j < n ? __ldg(tile + (u * WARPS * 32 + v * 32 / G) * G) : make_uint4(0, 0, 0, 0);
      }
    }
    load_keep<U, MASKED>(r, m, p.mask_sl, n,
                         [&](int u) { return j0 + u * WARPS * 32 + w * 32 + c * (32 / G) + l / G; });
  };
  auto offer_tile = [&](const R& r, int j0, float bound, uint32_t* end) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float part[G];
#pragma unroll
      for (int v = 0; v < G; ++v) {
        float f[VN];
        Vec<T>::to_float(r.v[u][v], f);
        float acc = 0.f;
#pragma unroll
        for (int e = 0; e < VN; ++e) acc = fmaf(qr[e], f[e], acc);
        part[v] = acc;
      }
      // Reduce-scatter: each step halves the keys a lane holds, keeping those
      // whose key bit m matches its own lane bit m; part[0] ends as key c.
#pragma unroll
      for (int m = G / 2; m >= 1; m /= 2) {
        const bool upper = c & m;
#pragma unroll
        for (int i = 0; i < m; ++i) {
          const float keep = upper ? part[i + m] : part[i];
          const float send = upper ? part[i] : part[i + m];
          part[i] = keep + __shfl_xor_sync(0xFFFFFFFFu, send, m);
        }
      }
      const int j = j0 + u * WARPS * 32 + w * 32 + c * (32 / G) + l / G;
      offer(j < n && (!MASKED || (r.keep >> u & 1)), part[0] * p.scale, pos0 + uint32_t(j), bound, buf, st, end);
    }
  };
  stream_tiles<TILE, R>(p, n, load, offer_tile, buf, cand, st, sh);
}

// Long keys (NVEC >= 8): G threads share a key (one 16-byte vector each per
// load, consecutive lanes on consecutive vectors: coalesced), then a shuffle
// reduction inside the group; the group's first lane offers the key.
template <typename T, int D, bool MASKED>
__device__ __forceinline__ void stream_span_long(const Params& p, const T* __restrict__ keys,
                                                 const query_t<T>* __restrict__ q, int n, uint32_t pos0, const bool* m,
                                                 uint64_t* buf, uint64_t* cand, Stream& st, SelectShared& sh) {
  constexpr int VN = Vec<T>::N;
  constexpr int NVEC = D / VN;                   // 16-byte vectors per key
  constexpr int G = NVEC < 32 ? NVEC : 32;       // threads per key
  constexpr int NV = NVEC / G;                   // vectors per thread per key
  constexpr int U = NV > 1 ? 2 : 4;              // keys per thread per tile
  constexpr int PER_PASS = kThreads / G;
  constexpr int TILE = PER_PASS * U;
  static_assert(TILE <= 512, "plan.cpp sizes the candidate list for tiles of at most 512 keys");
  const int lane = threadIdx.x % G;
  const int slot = threadIdx.x / G;
  float qr[NV][VN];
#pragma unroll
  for (int v = 0; v < NV; ++v) {
#pragma unroll
    for (int e = 0; e < VN; ++e) qr[v][e] = to_float(q[(v * G + lane) * VN + e]);
  }
  const uint4* base = reinterpret_cast<const uint4*>(keys) + slot * NVEC + lane;
  using R = Regs<U, NV>;
  auto load = [&](R& r, int j0, auto full) {
    const uint4* tile = base + int64_t(j0) * NVEC;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = j0 + u * PER_PASS + slot;
#pragma unroll
      for (int v = 0; v < NV; ++v)
        r.v[u][v] = full || j < n ? __ldg(tile + u * PER_PASS * NVEC + v * G) : make_uint4(0, 0, 0, 0);
    }
    load_keep<U, MASKED>(r, m, p.mask_sl, n, [&](int u) { return j0 + u * PER_PASS + slot; });
  };
  auto offer_tile = [&](const R& r, int j0, float bound, uint32_t* end) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float acc = 0.f;
#pragma unroll
      for (int v = 0; v < NV; ++v) {
        float f[VN];
        Vec<T>::to_float(r.v[u][v], f);
#pragma unroll
        for (int e = 0; e < VN; ++e) acc = fmaf(qr[v][e], f[e], acc);
      }
#pragma unroll
      for (int off = G / 2; off > 0; off /= 2) acc += __shfl_xor_sync(0xFFFFFFFFu, acc, off, G);
      const int j = j0 + u * PER_PASS + slot;
      offer(lane == 0 && j < n && (!MASKED || (r.keep >> u & 1)), acc * p.scale, pos0 + uint32_t(j), bound, buf, st, end);
    }
  };
  stream_tiles<TILE, R>(p, n, load, offer_tile, buf, cand, st, sh);
}

// Any d, any alignment: one thread per key, scalar loads.
template <typename T>
__device__ void stream_span_generic(const Params& p, const T* __restrict__ keys, const query_t<T>* __restrict__ q, int n,
                                    uint32_t pos0, const bool* m, uint64_t* buf, uint64_t* cand, Stream& st,
                                    SelectShared& sh) {
  for (int j0 = 0; j0 < n; j0 += kThreads) {
    const int j = j0 + threadIdx.x;
    float acc = 0.f;
    if (j < n) {
      const T* x = keys + int64_t(j) * p.d;
      for (int64_t c = 0; c < p.d; ++c) acc = fmaf(to_float(q[c]), to_float(x[c]), acc);
    }
    uint32_t end = 0;
    offer(j < n && kept(m, p.mask_sl, j), acc * p.scale, pos0 + uint32_t(j), bound_score(st), buf, st, &end);
    end_tile(p, end, kThreads, buf, cand, st, sh);
  }
}

// One CTA per (row, span). The CTA streams its span's keys into a candidate
// list in shared memory, filtered by the running bound and folded to the k
// best whenever it fills (for random scores: once early, then rarely, since
// only ~k·ln(n/k) keys of n beat the running k-th best), then selects and
// sorts the final k. Rows split into spans (few rows: B = 1..16 still fills
// the GPU) leave unsorted partial top-k lists; the row's last CTA to finish
// (atomic ticket) streams them through the same filter. One launch per call.
template <typename T, int D, bool MASKED>
__global__ void __launch_bounds__(kThreads, kCtasPerSm) topk_kernel(Params p) {
  __shared__ SelectShared sh;
  __shared__ Stream st;
  const SpanCta s = begin_span(p, st);
  const T* keys = static_cast<const T*>(p.keys) + (row_start(p, s.b) + s.start) * p.d;
  const query_t<T>* q = static_cast<const query_t<T>*>(p.query) + s.row * p.d;
  const bool* m = MASKED || D == 0 ? row_mask(p, s.b, s.start) : nullptr;
  const uint32_t pos0 = uint32_t(s.start);
  if constexpr (D == 0) {
    stream_span_generic<T>(p, keys, q, s.n, pos0, m, s.buf, s.cand, st, sh);
  } else if constexpr (D / Vec<T>::N <= 4) {
    stream_span_short<T, D, MASKED>(p, keys, q, s.n, pos0, m, s.buf, s.cand, st, sh);
  } else {
    stream_span_long<T, D, MASKED>(p, keys, q, s.n, pos0, m, s.buf, s.cand, st, sh);
  }
  finish_row(p, s.row, s.c, s.buf, s.cand, st, sh);
}

}  // namespace

template <typename T, int D>
void launch_d(const Params& p, dim3 grid, size_t smem, cudaStream_t stream) {
  // The generic path (D = 0) reads the mask at run time: it has registers to spare.
  if (D > 0 && p.mask != nullptr) launch_with_smem(topk_kernel<T, D, true>, grid, smem, stream, p);
  else launch_with_smem(topk_kernel<T, D, false>, grid, smem, stream, p);
}

template <typename T>
void launch_topk(const Params& p, int64_t rows, size_t smem, bool vectorised, cudaStream_t stream) {
  const dim3 grid = span_grid(p, rows);
  if (vectorised && p.d == 16) launch_d<T, 16>(p, grid, smem, stream);
  else if (vectorised && p.d == 32) launch_d<T, 32>(p, grid, smem, stream);
  else if (vectorised && p.d == 64) launch_d<T, 64>(p, grid, smem, stream);
  else if (vectorised && p.d == 128) launch_d<T, 128>(p, grid, smem, stream);
  else if (vectorised && p.d == 256) launch_d<T, 256>(p, grid, smem, stream);
  else launch_d<T, 0>(p, grid, smem, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace dare
