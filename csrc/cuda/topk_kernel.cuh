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
// k above kMaxK takes an exact ATen path (float32 scores, one int64 sort).
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
#include "topk_kernel.h"

namespace dare {
namespace {

constexpr int kMergeBatch = 8;  // partial-list keys per thread loaded at once by the merging CTA

// ---------------------------------------------------------------------------
// Loading keys: 16 bytes -> float32.

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

// ---------------------------------------------------------------------------
// Block-wide selection over unique nonzero packed keys (zero is padding).

struct SelectShared {
  uint32_t hist[2][256];  // select_threshold's bins: one pass fills one while the other is cleared
  uint32_t warp_sums[kThreads / 32];
  uint64_t warp_lo[kThreads / 32], warp_hi[kThreads / 32];  // select_threshold: min and max
  uint32_t digit, above, in_bin;
  uint32_t count;
};

// The candidate list a CTA streams into: `count` keys in buf. Every key
// streamed so far that can still be in the top k is among them; the others
// were below `bound`, which k kept keys reach (a fold's cut).
struct Stream {
  uint32_t count;
  uint64_t bound;
  int last;  // this CTA merges its row's partial lists
};

__device__ __forceinline__ uint32_t lane_id() { return threadIdx.x % 32; }

// The list's bound as a float score, for the filters (bound 0, nothing folded
// yet, reads as NaN: every score passes).
__device__ __forceinline__ float bound_score(const Stream& st) { return key_score(uint32_t(st.bound >> 32)); }

// Inclusive suffix sum over the 256 bins (thread t holds bin t).
__device__ __forceinline__ uint32_t suffix_sum(uint32_t h, SelectShared& sh) {
  static_assert(kThreads == 256, "one thread per bin");
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint32_t s = h;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const uint32_t o = __shfl_down_sync(0xFFFFFFFFu, s, off);
    if (lane + off < 32) s += o;
  }
  if (lane == 0) sh.warp_sums[warp] = s;
  __syncthreads();
  for (int w = warp + 1; w < kThreads / 32; ++w) s += sh.warp_sums[w];
  return s;
}

// Sorts the sh.count keys finish left in cand descending. Up to kThreads
// keys: each key's rank among the (unique) others is its slot, one barrier
// instead of the log² stages of a bitonic sort, for the latency of the merging CTA. The bitonic
// sort has fewer instructions, but at B = 1024 it measured no faster on the
// H200 (d = 16: 0.105 vs 0.101 ms).
__device__ void sort_desc(uint64_t* cand, int kpow2, SelectShared& sh) {
  if (kpow2 <= kThreads) {
    const int n = int(sh.count);
    uint64_t x = 0;
    int rank = 0;
    if (threadIdx.x < n) {
      x = cand[threadIdx.x];
      for (int j = 0; j < n; ++j) rank += cand[j] > x;
    }
    __syncthreads();
    if (threadIdx.x < n) cand[rank] = x;
    __syncthreads();
    return;
  }
  for (int size = 2; size <= kpow2; size *= 2) {
    for (int stride = size / 2; stride > 0; stride /= 2) {
      for (int i = threadIdx.x; i < kpow2 / 2; i += kThreads) {
        const int lo = 2 * i - (i & (stride - 1));
        const int hi = lo + stride;
        const uint64_t a = cand[lo], b = cand[hi];
        const bool descending = (lo & size) == 0;
        if ((a < b) == descending) {
          cand[lo] = b;
          cand[hi] = a;
        }
      }
      __syncthreads();
    }
  }
}

// Returns T such that exactly `want` of buf[0..n) (unique, nonzero) are >= T,
// and clears sh.count for the compaction that follows (barriers publish it).
// Radix select, 8 bits a pass, starting below the bits all keys share (where
// their min and max agree): a list's keys lie between its bound and its best,
// so a pass over the top byte would leave them in one or two bins. It stops
// as soon as the wanted keys are exactly those above a prefix (random scores:
// 2-3 passes). Plain shared atomics: the bins are spread. H200, against the
// top-byte-first select with __match_any_sync it replaced: B = 1024 the same,
// B = 8 d = 16/32 graph replay 19.6/20.5 vs 21.1/21.6 us, and it is what made
// the many-targets kernel's folds cheap. Double-buffered bins took a pass from
// five barriers to three: B = 8 d = 16/32 graph replay 15.8/16.9 -> 14.4/15.5 us.
__device__ uint64_t select_threshold(const uint64_t* buf, int n, int want, SelectShared& sh) {
  const int warp = threadIdx.x / 32;
  uint64_t lo = ~uint64_t(0), hi = 0;
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const uint64_t x = buf[i];
    if (x != 0) {
      lo = x < lo ? x : lo;
      hi = x > hi ? x : hi;
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    const uint64_t l2 = __shfl_xor_sync(0xFFFFFFFFu, lo, off), h2 = __shfl_xor_sync(0xFFFFFFFFu, hi, off);
    lo = l2 < lo ? l2 : lo;
    hi = h2 > hi ? h2 : hi;
  }
  if (lane_id() == 0) {
    sh.warp_lo[warp] = lo;
    sh.warp_hi[warp] = hi;
  }
  sh.hist[0][threadIdx.x] = 0;
  if (threadIdx.x == 0) sh.count = 0;
  __syncthreads();
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) {
    lo = sh.warp_lo[w] < lo ? sh.warp_lo[w] : lo;
    hi = sh.warp_hi[w] > hi ? sh.warp_hi[w] : hi;
  }
  if (lo == hi) return hi;  // one distinct key: want == 1
  int top = 63 - __clzll(static_cast<long long>(lo ^ hi));  // highest unresolved bit
  uint64_t prefix = hi & (top == 63 ? 0 : (~uint64_t(0) << (top + 1)));
  uint32_t remaining = uint32_t(want);
  // Three barriers a pass: the bins are double-buffered, so the next pass's
  // are cleared while this pass reads its own.
  for (int pass = 0; top >= 0; ++pass) {
    const int width = top + 1 < 8 ? top + 1 : 8;
    const int shift = top + 1 - width;
    const uint64_t fixed = top == 63 ? 0 : (~uint64_t(0) << (top + 1));
    uint32_t* hist = sh.hist[pass & 1];
    for (int i = threadIdx.x; i < n; i += kThreads) {
      const uint64_t x = buf[i];
      if (x != 0 && (x & fixed) == prefix) atomicAdd(&hist[uint32_t(x >> shift) & 0xFFu], 1u);
    }
    __syncthreads();
    const uint32_t h = hist[threadIdx.x];
    sh.hist[(pass + 1) & 1][threadIdx.x] = 0;  // the next pass's: last read before the previous pass's 2nd barrier
    const uint32_t s = suffix_sum(h, sh);
    if (s >= remaining && s - h < remaining) {
      sh.digit = threadIdx.x;
      sh.above = s - h;
      sh.in_bin = h;
    }
    __syncthreads();
    // sh.digit, above and in_bin are rewritten after the next pass's second barrier.
    remaining -= sh.above;
    prefix |= uint64_t(sh.digit) << shift;
    if (sh.in_bin == remaining) break;  // the whole bin is wanted
    top = shift - 1;
  }
  return prefix;
}

// Copies the nonzero keys >= cut of buf[0..n) to cand[0, sh.count), which
// must start at 0 (select_threshold clears it), and publishes them. A slot is
// `atomicAdd(counter, 1)` under the take: the compiler makes it one shared
// atomic per warp (leader, popc of the takers, each lane's rank), fewer
// instructions than the same by hand around a ballot.
__device__ __forceinline__ void compact(const uint64_t* buf, int n, uint64_t cut, uint64_t* cand, SelectShared& sh) {
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const uint64_t x = buf[i];
    if (x >= cut && x != 0) cand[atomicAdd(&sh.count, 1u)] = x;
  }
  __syncthreads();
}

// Cuts buf (st.count > k keys) to its k best and raises st.bound to the cut.
// cand is scratch.
__device__ void fold(const Params& p, uint64_t* buf, uint64_t* cand, Stream& st, SelectShared& sh) {
  const int n = int(st.count);
  const uint64_t cut = select_threshold(buf, n, p.k, sh);
  compact(buf, n, cut, cand, sh);  // exactly k are taken
  for (int i = threadIdx.x; i < p.k; i += kThreads) buf[i] = cand[i];
  if (threadIdx.x == 0) {
    st.count = uint32_t(p.k);
    st.bound = cut;
  }
  __syncthreads();
}

// Appends key() (computed by takers only) to buf, a slot taken as in
// compact; *end: this thread's last slot + 1, so the largest of any thread's
// is the count.
template <typename Key>
__device__ __forceinline__ void append(bool take, Key key, uint64_t* buf, Stream& st, uint32_t* end) {
  if (take) {
    const uint32_t slot = atomicAdd(&st.count, 1u);
    buf[slot] = key();
    *end = slot + 1;
  }
}

// Offers one score (valid = its key exists): it joins buf unless it is below
// `bound` (bound_score). A superset of the keys above the bound is kept; the
// folds and the final select are exact. Comparing floats, not packed keys,
// leaves the packing to the takers.
__device__ __forceinline__ void offer(bool valid, float score, uint32_t pos, float bound, uint64_t* buf, Stream& st,
                                      uint32_t* end) {
  append(valid && !(score < bound), [&] { return pack(score, pos); }, buf, st, end);  // NaN passes
}

// Offers a packed key (a partial list's, in the merge).
__device__ __forceinline__ void offer_key(bool valid, uint64_t key, uint32_t bound_hi, uint64_t* buf, Stream& st,
                                          uint32_t* end) {
  append(valid && uint32_t(key >> 32) >= bound_hi, [&] { return key; }, buf, st, end);
}

// After each tile (every thread calls it): folds when the next tile could
// overflow buf, and says whether it did. The barrier also publishes the
// tile's appends.
__device__ __forceinline__ bool end_tile(const Params& p, uint32_t end, int tile, uint64_t* buf, uint64_t* cand,
                                         Stream& st, SelectShared& sh) {
  // The largest `end` of any thread is the count; the barrier's OR decides for all.
  if (!__syncthreads_or(end + uint32_t(tile) > uint32_t(p.cap))) return false;
  fold(p, buf, cand, st, sh);
  return true;
}

// The exact top-k of buf into cand (zero-padded to kpow2), sorted descending
// when `sorted` (a partial list need not be: the merge filters, it does not merge).
__device__ void finish(const Params& p, uint64_t* buf, uint64_t* cand, Stream& st, SelectShared& sh,
                       bool sorted) {
  const int n = int(st.count);
  for (int i = threadIdx.x; i < p.kpow2; i += kThreads) cand[i] = 0;  // before the barrier below (or the select's)
  uint64_t cut = 1;
  if (n > p.k) {
    cut = select_threshold(buf, n, p.k, sh);
  } else {
    if (threadIdx.x == 0) sh.count = 0;
    __syncthreads();
  }
  compact(buf, n, cut, cand, sh);
  if (threadIdx.x == 0 && n > p.k) st.bound = cut;  // k keys are >= cut: a bound for a merge
  if (sorted) sort_desc(cand, p.kpow2, sh);
}

// ---------------------------------------------------------------------------
// Streaming the keys of one span: scores, then offer.

// A tile's worth of 16-byte vectors in one thread's registers.
template <int A, int B>
struct Regs {
  uint4 v[A][B];
};

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
template <typename T, int D>
__device__ __forceinline__ void stream_span_short(const Params& p, const T* __restrict__ keys,
                                                  const T* __restrict__ q, int n, uint32_t pos0, uint64_t* buf,
                                                  uint64_t* cand, Stream& st, SelectShared& sh) {
  constexpr int VN = Vec<T>::N;
  constexpr int G = D / VN;                  // vectors per key = lanes per group
  constexpr int U = G == 4 ? 1 : (G == 2 ? 2 : 4);  // rounds of 32 keys per warp per tile
  constexpr int WARPS = kThreads / 32;
  constexpr int TILE = WARPS * U * 32;
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
      offer(j < n, part[0] * p.scale, pos0 + uint32_t(j), bound, buf, st, end);
    }
  };
  stream_tiles<TILE, R>(p, n, load, offer_tile, buf, cand, st, sh);
}

// Long keys (NVEC >= 8): G threads share a key (one 16-byte vector each per
// load, consecutive lanes on consecutive vectors: coalesced), then a shuffle
// reduction inside the group; the group's first lane offers the key.
template <typename T, int D>
__device__ __forceinline__ void stream_span_long(const Params& p, const T* __restrict__ keys,
                                                 const T* __restrict__ q, int n, uint32_t pos0, uint64_t* buf,
                                                 uint64_t* cand, Stream& st, SelectShared& sh) {
  constexpr int VN = Vec<T>::N;
  constexpr int NVEC = D / VN;                   // 16-byte vectors per key
  constexpr int G = NVEC < 32 ? NVEC : 32;       // threads per key
  constexpr int NV = NVEC / G;                   // vectors per thread per key
  constexpr int U = NV > 1 ? 2 : 4;              // keys per thread per tile
  constexpr int PER_PASS = kThreads / G;
  constexpr int TILE = PER_PASS * U;
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
      offer(lane == 0 && j < n, acc * p.scale, pos0 + uint32_t(j), bound, buf, st, end);
    }
  };
  stream_tiles<TILE, R>(p, n, load, offer_tile, buf, cand, st, sh);
}

// Any d, any alignment: one thread per key, scalar loads.
template <typename T>
__device__ void stream_span_generic(const Params& p, const T* __restrict__ keys, const T* __restrict__ q, int n,
                                    uint32_t pos0, uint64_t* buf, uint64_t* cand, Stream& st, SelectShared& sh) {
  for (int j0 = 0; j0 < n; j0 += kThreads) {
    const int j = j0 + threadIdx.x;
    float acc = 0.f;
    if (j < n) {
      const T* x = keys + int64_t(j) * p.d;
      for (int64_t c = 0; c < p.d; ++c) acc = fmaf(to_float(q[c]), to_float(x[c]), acc);
    }
    uint32_t end = 0;
    offer(j < n, acc * p.scale, pos0 + uint32_t(j), bound_score(st), buf, st, &end);
    end_tile(p, end, kThreads, buf, cand, st, sh);
  }
}

__device__ __forceinline__ void write_final(const Params& p, int64_t row, const uint64_t* cand) {
  for (int i = threadIdx.x; i < p.k; i += kThreads) {
    const uint64_t x = cand[i];
    p.scores[row * p.k + i] = x == 0 ? -INFINITY : packed_score(x);
    p.indices[row * p.k + i] = x == 0 ? -1 : packed_pos(x);
  }
}

// One CTA per (row, span). The CTA streams its span's keys into a candidate
// list in shared memory, filtered by the running bound and folded to the k
// best whenever it fills (for random scores: once early, then rarely, since
// only ~k·ln(n/k) keys of n beat the running k-th best), then selects and
// sorts the final k. Rows split into spans (few rows: B = 1..16 still fills
// the GPU) leave unsorted partial top-k lists; the row's last CTA to finish
// (atomic ticket) streams them through the same filter. One launch per call.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads, kCtasPerSm) topk_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint64_t* buf = reinterpret_cast<uint64_t*>(smem_raw);  // cap
  uint64_t* cand = buf + p.cap;                            // kpow2
  __shared__ SelectShared sh;
  __shared__ Stream st;

  const int64_t row = blockIdx.x / p.splits;
  const int c = blockIdx.x % p.splits;
  const int64_t b = row / p.T;
  const int64_t start = int64_t(c) * p.span;
  const int64_t len = row_length(p, b);
  const int n = int(len > start ? (len - start < p.span ? len - start : p.span) : 0);
  if (threadIdx.x == 0) {
    st.count = 0;
    st.bound = 0;
  }
  __syncthreads();

  const T* keys = static_cast<const T*>(p.keys) + (b * p.L + start) * p.d;
  const T* q = static_cast<const T*>(p.query) + row * p.d;
  const uint32_t pos0 = uint32_t(start);
  if constexpr (D == 0) {
    stream_span_generic<T>(p, keys, q, n, pos0, buf, cand, st, sh);
  } else if constexpr (D / Vec<T>::N <= 4) {
    stream_span_short<T, D>(p, keys, q, n, pos0, buf, cand, st, sh);
  } else {
    stream_span_long<T, D>(p, keys, q, n, pos0, buf, cand, st, sh);
  }
  finish(p, buf, cand, st, sh, /*sorted=*/p.splits == 1);
  if (p.splits == 1) {
    write_final(p, row, cand);
    return;
  }

  uint64_t* lists = p.partial + row * p.splits * p.k;
  for (int i = threadIdx.x; i < p.k; i += kThreads) lists[int64_t(c) * p.k + i] = cand[i];
  // Publish the list, then take a ticket; the last CTA of the row sees every
  // other CTA's list (each fenced before its ticket).
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) st.last = atomicAdd(&p.tickets[row], 1u) == uint32_t(p.splits - 1);
  __syncthreads();
  if (!st.last) return;
  __threadfence();
  // Seeded with its own list and cut (st.bound), the merge lets through only
  // the keys of the other lists that beat them: ~k·ln(splits), no fold.
  const uint32_t own = sh.count;
  for (int i = threadIdx.x; i < p.k; i += kThreads) buf[i] = cand[i];
  if (threadIdx.x == 0) st.count = own;
  __syncthreads();
  // The lists are read kMergeBatch keys per thread at a time, all loads in
  // flight together: one L2 round trip per batch, not one per tile of kThreads
  // keys (this CTA's merge is the tail of a small batch's latency).
  const int total = p.splits * p.k;
  const int own_lo = c * p.k, own_hi = own_lo + p.k;
  // A round needs no tile-end check (a barrier on the small batch's critical
  // path) while the list could take every key of the next round even if this
  // and every unchecked round took all of theirs: `worst` bounds the count.
  uint32_t worst = own, end = 0;
  for (int b0 = 0; b0 < total; b0 += kMergeBatch * kThreads) {
    uint64_t x[kMergeBatch];
#pragma unroll
    for (int u = 0; u < kMergeBatch; ++u) {
      const int i = b0 + u * kThreads + threadIdx.x;
      const bool other = i < total && (i < own_lo || i >= own_hi);
      x[u] = other ? __ldcg(lists + i) : 0;  // L2: other CTAs wrote it
    }
#pragma unroll
    for (int u = 0; u < kMergeBatch; ++u) {
      if (b0 + u * kThreads >= total) break;
      offer_key(x[u] != 0, x[u], uint32_t(st.bound >> 32), buf, st, &end);
      worst += kThreads;
      const bool more = b0 + (u + 1) * kThreads < total;
      if (more && worst + kThreads > uint32_t(p.cap) && end_tile(p, end, kThreads, buf, cand, st, sh)) {
        worst = uint32_t(p.k);
        end = 0;
      }
    }
  }
  __syncthreads();  // the last appends, before finish reads the count
  finish(p, buf, cand, st, sh, /*sorted=*/true);
  write_final(p, row, cand);
}

// Launches kernel(p) with `smem` bytes of dynamic shared memory, opting in
// past the default 48 KB.
template <typename Kernel>
void launch_with_smem(Kernel kernel, dim3 grid, size_t smem, cudaStream_t stream, const Params& p) {
  if (smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, kThreads, smem, stream>>>(p);
}

}  // namespace

template <typename T>
void launch_topk(const Params& p, int64_t rows, size_t smem, bool vectorised, cudaStream_t stream) {
  const dim3 grid(unsigned(rows * p.splits));
  if (vectorised && p.d == 16) launch_with_smem(topk_kernel<T, 16>, grid, smem, stream, p);
  else if (vectorised && p.d == 32) launch_with_smem(topk_kernel<T, 32>, grid, smem, stream, p);
  else if (vectorised && p.d == 64) launch_with_smem(topk_kernel<T, 64>, grid, smem, stream, p);
  else if (vectorised && p.d == 128) launch_with_smem(topk_kernel<T, 128>, grid, smem, stream, p);
  else if (vectorised && p.d == 256) launch_with_smem(topk_kernel<T, 256>, grid, smem, stream, p);
  else launch_with_smem(topk_kernel<T, 0>, grid, smem, stream, p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace dare
