// Many targets sharing one sequence (query (B, T, d), T >= 8, 16-bit keys):
// a CTA takes G <= 8 targets of one row, reads the row's keys once for all of
// them and scores them on the tensor cores.
//
// Each warp of the CTA streams its blocks of 16 keys and scores a block
// against the G targets with mma.m16n8k16 (float32 accumulation; 16 keys x 8
// targets per instruction, targets past G are zero). The dims need no
// reordering in memory: a dot product is a sum, so any assignment of dims to
// the MMA's k slots serves as long as the key (A) and query (B) fragments
// agree. Lane (g, c) loads dims [c*D/4, (c+1)*D/4) of keys g and g + 8 of the
// block (D = 16: 8-byte loads; D >= 32: 16-byte loads, chunk 4i + c so each
// load instruction is coalesced) and the same dims of target g's query; its
// accumulator then holds the scores of keys g, g + 8 for targets 2c, 2c + 1.
//
// Selection filters as the streaming kernel's (topk_kernel.cuh), a list per
// target: a score joins its target's candidate list when it reaches the
// target's bound (a float compare). SHARED_LISTS (8 warps, the default): every
// warp appends to a target's one list through a shared atomic count, and the
// warps meet (warp t folds target t's list) only when a list could overflow.
// Else (DARE_CUDA_TARGETS_APPEND=segments, and 16 warps; not yet measured on a
// GPU) a list is its k kept keys, then a segment per warp: a warp appends to
// its own segments, its counts in registers (the lanes sharing a target
// compute the same count from the ballots), the raw (score, position) stored
// unpacked, so an append is a popc and a store, no shared atomic, shuffle,
// packing or branch per key (sm_90 SASS, bf16 d = 32: ~70 instructions a
// block of 16 keys x 8 targets with a passing score, against ~140); after 1,
// 2, 4, .. tiles, then every M (the segments' room for a warp's keys of M
// tiles), the warps meet: warp t gathers target t's segments behind its kept
// keys, packing them, and folds the list to k. At the end warp t writes
// target t's sorted top k (select.cuh's warp selection: the G targets in
// parallel, no CTA barrier inside; H100, T = 1024, G = 8, d = 32: 70.8 us
// against 111.1 with the CTA selecting target after target). Rows are not
// split: G is chosen so that the CTAs fill the GPU (fewer targets per CTA,
// more CTAs), else the streaming kernel runs.
#pragma once

#include <cstdint>
#include <string>
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

// c += a (16 keys x 16 dims, row-major fragment) * b (16 dims x 8 targets), float32.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint32_t b0, uint32_t b1) {
#define DARE_MMA(TYPE)                                                                            \
  asm("mma.sync.aligned.m16n8k16.row.col.f32." TYPE "." TYPE ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, " \
      "{%8,%9}, {%0,%1,%2,%3};"                                                                  \
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                           \
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1))
  if constexpr (std::is_same_v<T, __half>) DARE_MMA("f16");
  else DARE_MMA("bf16");
#undef DARE_MMA
}

// c += a (16 keys x 8 dims) * b (8 dims x 8 targets), tf32 inputs, float32.
__device__ __forceinline__ void mma_1688_tf32(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                              uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// A float32 x as hi + lo, each a tf32 (11 significant bits): x - hi - lo is
// within 2^-24 |x|, float32's own rounding. A non-finite x gets lo = 0, so
// that a product with an infinite factor stays in the hi * hi term alone; a
// finite x that rounds to infinity (|x| near FLT_MAX) is truncated instead.
__device__ __forceinline__ void split_tf32(uint32_t x, uint32_t& hi, uint32_t& lo) {
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(hi) : "f"(__uint_as_float(x)));
  if (isinf(__uint_as_float(hi)) && isfinite(__uint_as_float(x))) hi = x & 0xFFFFE000u;
  const float r = __uint_as_float(x) - __uint_as_float(hi);
  uint32_t l;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(l) : "f"(r));
  lo = isfinite(r) ? l : 0u;
}

// x, hidden from the optimiser (computed here, not re-derived where it is used).
__device__ __forceinline__ uint32_t opaque(uint32_t x) {
  asm volatile("mov.b32 %0, %0;" : "+r"(x));
  return x;
}

__device__ __forceinline__ void st_shared_u64(uint32_t addr, uint64_t v) {
  asm volatile("st.shared.u64 [%0], %1;" ::"r"(addr), "l"(v) : "memory");
}

// Byte offset within a key of word m (4 bytes) of lane group c's share of a
// KB-byte key: a 32-byte key as 8-byte loads (chunk c), a longer one as
// 16-byte loads (chunk 4i + c: each load instruction is coalesced).
template <int KB>
__device__ __forceinline__ int word_byte(int m, int c) {
  if constexpr (KB == 32) return 8 * c + 4 * m;
  else return ((m / 4) * 4 + c) * 16 + 4 * (m % 4);
}

// Lane group c's KB/16 words of one key (zeros when !ok).
template <int KB>
__device__ __forceinline__ void load_key(const void* key, bool ok, int c, uint32_t (&w)[KB / 16]) {
  if constexpr (KB == 32) {
    const uint2 v = ok ? __ldg(static_cast<const uint2*>(key) + c) : make_uint2(0, 0);
    w[0] = v.x;
    w[1] = v.y;
  } else {
#pragma unroll
    for (int i = 0; i < KB / 64; ++i) {
      const uint4 v = ok ? __ldg(static_cast<const uint4*>(key) + 4 * i + c) : make_uint4(0, 0, 0, 0);
      w[4 * i] = v.x;
      w[4 * i + 1] = v.y;
      w[4 * i + 2] = v.z;
      w[4 * i + 3] = v.w;
    }
  }
}

// One CTA per (row b, group of p.group targets). MASKED: p.mask is set (the
// unmasked kernel's key loads carry no mask tests).
//
// float keys (D = 16, 32) take the tensor cores too, as 3xTF32: key and query
// each split into tf32 hi + lo (split_tf32), the score hi*hi + (hi*lo + lo*hi)
// (lo*lo, below 2^-24 of the product, dropped): float32 accuracy, not
// float32's rounding order (the oracle's tolerance holds either).
//
// W warps a CTA (8, or 16: twice the warps to hide the scoring's latency, the
// same registers a thread).
template <typename T, int D, bool MASKED, int W, bool SHARED_LISTS>
__global__ void __launch_bounds__(W * 32, W == 8 ? 2 : 1) targets_kernel(Params p) {
  constexpr bool F32 = std::is_same_v<T, float>;
  constexpr int KB = D * int(sizeof(T));  // bytes per key
  static_assert(W == 8 || W == 16, "8 or 16 warps");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint64_t* lists = reinterpret_cast<uint64_t*>(smem_raw);  // p.group x p.cap
  __shared__ Stream st[8];
  __shared__ __align__(16) uint32_t hist[8][256];  // warp w's bins: it selects target w
  __shared__ uint32_t seg_count[8][W];              // target t's keys in warp w's segment, at a meeting

  const int warp = threadIdx.x / 32, lane = int(lane_id()), g = lane >> 2, c = lane & 3;
  const int64_t groups = (p.T + p.group - 1) / p.group;
  const int64_t b = blockIdx.x / groups;
  const int64_t t0 = (blockIdx.x % groups) * p.group;
  const int ng = int(p.T - t0 < p.group ? p.T - t0 : p.group);  // targets of this CTA
  const int n = int(row_length(p, b));
  if (threadIdx.x < 8) {
    st[threadIdx.x].count = 0;
    st[threadIdx.x].bound = 0;
  }
  __syncthreads();

  // B fragment: target t0 + g's words in the keys' word order; zero past ng
  // (float: q holds the hi parts, q_lo the lo parts).
  constexpr int NW = KB / 16;
  uint32_t q[NW], q_lo[F32 ? NW : 1];
  {
    const unsigned char* qr = static_cast<const unsigned char*>(p.query) + (b * p.T + t0 + (g < ng ? g : 0)) * KB;
#pragma unroll
    for (int m = 0; m < NW; ++m) {
      q[m] = g < ng ? *reinterpret_cast<const uint32_t*>(qr + word_byte<KB>(m, c)) : 0u;
      if constexpr (F32) split_tf32(q[m], q[m], q_lo[m]);
    }
  }

  constexpr int TILE = targets_tile(KB, W);
  constexpr int U = TILE / (16 * W);  // blocks of 16 keys per warp per tile
  static_assert(U >= 1 && TILE == 16 * W * U, "a tile is whole blocks of every warp");
  struct Tile {
    uint32_t w[U][2][NW];  // block u, key g (0) and g + 8 (1)
    uint32_t keep;         // bit 2u + h: that key takes part (the mask)
  };
  const T* keys = static_cast<const T*>(p.keys) + row_start(p, b) * D;
  const bool* mask = MASKED ? row_mask(p, b, 0) : nullptr;
  // A whole tile (j0 + TILE <= n) loads without bounds tests.
  auto load = [&](Tile& s, int j0, auto whole) {
    s.keep = 0;
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int j = j0 + (warp * U + u) * 16 + 8 * h + g;
        const bool in = decltype(whole)::value || j < n;
        load_key<KB>(keys + int64_t(j) * D, in, c, s.w[u][h]);
        if constexpr (MASKED) s.keep |= uint32_t(in && kept(mask, p.mask_sl, j)) << (2 * u + h);
        else s.keep |= uint32_t(in) << (2 * u + h);
      }
    }
  };
  auto load_tile = [&](Tile& s, int j0) {
    if (j0 + TILE <= n) load(s, j0, std::true_type{});
    else load(s, j0, std::false_type{});
  };

  const int ta = 2 * c, tb = 2 * c + 1;  // this lane's targets
  const bool has_a = ta < ng, has_b = tb < ng;
  const uint32_t group = 0x11111111u << c;  // the lanes that share them
  const uint32_t below = lanes_below();
  // Segments: a warp appends at most U * 16 keys a target per tile, so segments
  // of M tiles' worth (S slots) behind the kpow2 kept slots fill p.cap.
  const int M = (p.cap - p.kpow2) / TILE;  // >= 1: the host gives a list kpow2 + a tile at least
  const int S = M * U * 16;
  uint64_t* list_a = lists + int64_t(ta) * p.cap + (SHARED_LISTS ? 0 : p.kpow2 + warp * S);
  uint64_t* list_b = list_a + p.cap;
  uint32_t cnt_a = 0, cnt_b = 0;  // this warp's segment counts of targets ta, tb
  // Their shared-memory addresses, computed once (opaque: else the compiler
  // rebuilds them at each store), and a slot the lanes without a key store to.
  __shared__ uint64_t trash_slot;
  const uint32_t seg_a = SHARED_LISTS ? 0u : opaque(uint32_t(__cvta_generic_to_shared(list_a)));
  const uint32_t seg_b = seg_a + 8 * p.cap;
  const uint32_t trash = SHARED_LISTS ? 0u : opaque(uint32_t(__cvta_generic_to_shared(&trash_slot)));
  // The warps' meeting: warp t gathers (unless SHARED_LISTS) and folds target t's list.
  const auto meet = [&](bool last) {
    if constexpr (!SHARED_LISTS) {
      if (lane < 4) {
        seg_count[ta][warp] = cnt_a;
        seg_count[tb][warp] = cnt_b;
      }
      cnt_a = cnt_b = 0;
    }
    __syncthreads();
    if (warp < ng) {
      uint64_t* list = lists + int64_t(warp) * p.cap;
      if constexpr (!SHARED_LISTS) warp_gather(list, p.kpow2, S, seg_count[warp], W, st[warp]);
      if (last) warp_finish(p, list, st[warp], hist[warp], b * p.T + t0 + warp);
      else if (st[warp].count > uint32_t(p.k)) warp_fold(p.k, list, st[warp], hist[warp]);
    }
    if (!last) __syncthreads();  // no append before the folds end; after it the warps run apart
  };
  Tile cur, nxt;
  uint32_t high = 0;  // SHARED_LISTS: the longest list at the warps' last meeting
  int since = 0;      // tiles since
  // Tiles between meetings: 1, 2, 4, .. up to M. The first folds come early (a
  // list's bound stays NaN, every score passing, until its first fold) and cut
  // short lists.
  int every = 1;
  if (n > 0) load_tile(cur, 0);
  for (int j0 = 0; j0 < n; j0 += TILE) {
    if (j0 + TILE < n) load_tile(nxt, j0 + TILE);
    const float bound_a = bound_score(st[ta]), bound_b = bound_score(st[tb]);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float acc[4] = {0.f, 0.f, 0.f, 0.f};
      if constexpr (F32) {
        float corr[4] = {0.f, 0.f, 0.f, 0.f};  // hi*lo + lo*hi
#pragma unroll
        for (int s = 0; s < NW / 2; ++s) {
          uint32_t hi[4], lo[4];
          split_tf32(cur.w[u][0][2 * s], hi[0], lo[0]);
          split_tf32(cur.w[u][1][2 * s], hi[1], lo[1]);
          split_tf32(cur.w[u][0][2 * s + 1], hi[2], lo[2]);
          split_tf32(cur.w[u][1][2 * s + 1], hi[3], lo[3]);
          mma_1688_tf32(corr, hi[0], hi[1], hi[2], hi[3], q_lo[2 * s], q_lo[2 * s + 1]);
          mma_1688_tf32(corr, lo[0], lo[1], lo[2], lo[3], q[2 * s], q[2 * s + 1]);
          mma_1688_tf32(acc, hi[0], hi[1], hi[2], hi[3], q[2 * s], q[2 * s + 1]);
        }
        // A non-finite hi*hi sum is the score (an infinite factor's cross terms are
        // NaN or infinite, not a correction).
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[r] += isfinite(acc[r]) ? corr[r] : 0.f;
      } else {
#pragma unroll
        for (int s = 0; s < NW / 2; ++s)
          mma_16816<T>(acc, cur.w[u][0][2 * s], cur.w[u][1][2 * s], cur.w[u][0][2 * s + 1], cur.w[u][1][2 * s + 1],
                      q[2 * s], q[2 * s + 1]);
      }
      // acc: (key g, target ta), (g, tb), (g + 8, ta), (g + 8, tb).
      const int j = j0 + (warp * U + u) * 16 + g;
      bool take[4];
      uint32_t m[4];
      float sc[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        sc[r] = acc[r] * p.scale;
        const bool b_side = r & 1;
        take[r] = (cur.keep >> (2 * u + (r >> 1)) & 1) && (b_side ? has_b : has_a) &&
                  !(sc[r] < (b_side ? bound_b : bound_a));
        m[r] = __ballot_sync(0xFFFFFFFFu, take[r]);  // NaN passes
      }
      if ((m[0] | m[1] | m[2] | m[3]) == 0) continue;
      // Rounds 0 and 2 fill target ta's slots, rounds 1 and 3 target tb's.
      const uint32_t na0 = __popc(m[0] & group), nb0 = __popc(m[1] & group);
      const uint32_t na = na0 + __popc(m[2] & group), nb = nb0 + __popc(m[3] & group);
      // This block's first slot of each target: one reservation per target, by lane c (its
      // group's first lane), in a shared list; the warp's own count in its segments.
      uint32_t base_a = cnt_a, base_b = cnt_b;
      if constexpr (SHARED_LISTS) {
        if (lane < 4) {
          if (na) base_a = atomicAdd(&st[ta].count, na);
          if (nb) base_b = atomicAdd(&st[tb].count, nb);
        }
        base_a = __shfl_sync(0xFFFFFFFFu, base_a, c);
        base_b = __shfl_sync(0xFFFFFFFFu, base_b, c);
      } else {
        cnt_a += na;
        cnt_b += nb;
      }
      const uint32_t slot[4] = {base_a + __popc(m[0] & group & below), base_b + __popc(m[1] & group & below),
                                base_a + na0 + __popc(m[2] & group & below),
                                base_b + nb0 + __popc(m[3] & group & below)};
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        if constexpr (SHARED_LISTS) {
          if (take[r]) ((r & 1) ? list_b : list_a)[slot[r]] = pack(sc[r], uint32_t(j + 8 * (r >> 1)));
        } else {
          // Every lane stores, a lane without a key to the trash slot: no branches.
          st_shared_u64(take[r] ? ((r & 1) ? seg_b : seg_a) + 8 * slot[r] : trash,
                        raw_key(sc[r], uint32_t(j + 8 * (r >> 1))));
        }
      }
    }
    if constexpr (SHARED_LISTS) {
      // Fold the lists the next tile could overflow. The warps meet only when the
      // counts at their last meeting (high) plus every tile since, and the next,
      // could pass the lists' room: between meetings they run apart (their appends
      // are atomics; a bound read stale only passes more keys).
      if (high + uint32_t(++since + 1) * TILE > uint32_t(p.cap)) {
        __syncthreads();
        // The counts after the folds, the same in every thread: a list that folds
        // keeps k (read before or after its fold, a count maps to the same).
        high = 0;
        for (int t = 0; t < ng; ++t) {
          // Warp t may be writing k into it: read once, either value gives the same n_t.
          const uint32_t c_t = *reinterpret_cast<volatile const uint32_t*>(&st[t].count);
          const uint32_t n_t = c_t + TILE > uint32_t(p.cap) ? uint32_t(p.k) : c_t;
          high = n_t > high ? n_t : high;
        }
        if (warp < ng && st[warp].count + TILE > uint32_t(p.cap))
          warp_fold(p.k, lists + int64_t(warp) * p.cap, st[warp], hist[warp]);
        __syncthreads();  // no append before the folds end; after it the warps run apart
        since = 0;
      }
    } else if (++since == every && j0 + TILE < n) {
      meet(false);
      since = 0;
      every = 2 * every < M ? 2 * every : M;
    }
    cur = nxt;
  }
  meet(true);
}

}  // namespace

template <typename T>
void launch_targets(const Params& p, int64_t B, size_t smem, cudaStream_t stream) {
  const dim3 grid(unsigned(B * ((p.T + p.group - 1) / p.group)));
  const bool masked = p.mask != nullptr;
#define DARE_TARGETS_W(D, W, SL)                                                                           \
  masked ? launch_with_smem(targets_kernel<T, D, true, W, SL>, grid, smem, stream, p, W * 32)             \
         : launch_with_smem(targets_kernel<T, D, false, W, SL>, grid, smem, stream, p, W * 32)
#define DARE_TARGETS(D) \
  p.warps == 16 ? DARE_TARGETS_W(D, 16, false) : p.segments ? DARE_TARGETS_W(D, 8, false) : DARE_TARGETS_W(D, 8, true)
  if constexpr (std::is_same_v<T, float>) {
    switch (p.d) {
      case 16: DARE_TARGETS(16); break;
      case 32: DARE_TARGETS(32); break;
      default: TORCH_CHECK(false, std::string("topk_attention: no float many-targets kernel for d = ") + std::to_string(p.d));
    }
  } else {
    switch (p.d) {
      case 16: DARE_TARGETS(16); break;
      case 32: DARE_TARGETS(32); break;
      case 64: DARE_TARGETS(64); break;
      case 128: DARE_TARGETS(128); break;
      default: TORCH_CHECK(false, std::string("topk_attention: no many-targets kernel for d = ") + std::to_string(p.d));
    }
  }
#undef DARE_TARGETS
#undef DARE_TARGETS_W
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace dare
