// Block-wide exact selection shared by the CUDA kernels (topk_kernel.cuh,
// targets_kernel.cuh, embedding_kernel.cuh): a candidate list of packed
// (score, position) keys in shared memory, filtered by a running bound, folded
// to the k best by a radix select, and the split-row merge; with the CTA
// set-up and launch of the streaming kernels (begin_span, span_grid,
// launch_with_smem).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include <c10/cuda/CUDAException.h>

#include "../order.h"
#include "kernels.h"
#include "vec.cuh"

namespace dare {
namespace {

constexpr int kMergeBatch = 8;  // partial-list keys per thread loaded at once by the merging CTA

// Over unique nonzero packed keys (zero is padding).

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

// A CTA of the streaming kernels (topk_kernel, embedding_kernel): CTA
// row * p.splits + c (span_grid) takes span c of the row's p.splits equal
// spans; its dynamic shared memory (smem_bytes, p.group = 1) is its candidate
// list, then the select's scratch. finish_row ends it.
struct SpanCta {
  uint64_t* buf;          // p.cap keys: the candidate list
  uint64_t* cand;         // p.kpow2 keys: scratch
  int64_t row, b, start;  // output row, batch row, the span's first position in the row
  int c, n;               // span index, keys in the span
};

// Sets up the CTA and clears its list st (a barrier publishes it).
__device__ __forceinline__ SpanCta begin_span(const Params& p, Stream& st) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  SpanCta s;
  s.buf = reinterpret_cast<uint64_t*>(smem_raw);
  s.cand = s.buf + p.cap;
  s.row = blockIdx.x / p.splits;
  s.c = blockIdx.x % p.splits;
  s.b = s.row / p.T;
  const int64_t len = row_length(p, s.b);
  if (threadIdx.x == 0) {
    st.count = 0;
    st.bound = 0;
  }
  __syncthreads();
  // A jagged row, whose length the host never read, is cut by its own length
  // (a loop over spans spilled registers).
  const int64_t span = (len + p.splits - 1) / p.splits;
  s.start = int64_t(s.c) * span;
  s.n = int(len > s.start ? (len - s.start < span ? len - s.start : span) : 0);
  return s;
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

__device__ __forceinline__ void write_final(const Params& p, int64_t row, const uint64_t* cand) {
  for (int i = threadIdx.x; i < p.k; i += kThreads) {
    const uint64_t x = cand[i];
    p.scores[row * p.k + i] = x == 0 ? -INFINITY : packed_score(x);
    p.indices[row * p.k + i] = x == 0 ? -1 : packed_pos(x);
  }
}

// The end of a (row, span) CTA's stream: the row's sorted top-k written when the
// row is not split; else the CTA's partial list published and, by the row's last
// CTA to finish (an atomic ticket), the other lists streamed through the same
// filter, seeded with its own.
__device__ __forceinline__ void finish_row(const Params& p, int64_t row, int c, uint64_t* buf, uint64_t* cand, Stream& st,
                           SelectShared& sh) {
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

// Warp-level selection: one warp folds or finishes one list on its own (the
// many-targets kernel gives each of its G <= 8 targets a warp, where the CTA
// selection above takes the targets one after another, three CTA barriers a
// radix pass). `hist` is the warp's 256 bins in shared memory.

__device__ __forceinline__ uint32_t lanes_below() {
  uint32_t m;
  asm("mov.u32 %0, %%lanemask_lt;" : "=r"(m));
  return m;
}

// select_threshold by one warp: T such that exactly `want` of buf[0..n)
// (unique, nonzero, n >= want >= 1) are >= T. Lane l holds bins [8l, 8l + 8).
// The list is read kWarpBatch keys a lane at a time, all loads issued first:
// a fold is one warp's latency-bound walk while the CTA waits at its barrier.
constexpr int kWarpBatch = 4;

// This lane's keys of the batch at i0: buf[i0 + 32u + lane] (0 past n).
__device__ __forceinline__ void warp_batch(const uint64_t* buf, int i0, int n, uint64_t (&x)[kWarpBatch]) {
  const int i = i0 + int(lane_id());
#pragma unroll
  for (int u = 0; u < kWarpBatch; ++u) x[u] = i + 32 * u < n ? buf[i + 32 * u] : 0;
}

__device__ uint64_t warp_select_threshold(const uint64_t* buf, int n, int want, uint32_t* hist) {
  const int lane = int(lane_id());
  uint64_t lo = ~uint64_t(0), hi = 0;
  for (int i0 = 0; i0 < n; i0 += 32 * kWarpBatch) {
    uint64_t x[kWarpBatch];
    warp_batch(buf, i0, n, x);
#pragma unroll
    for (int u = 0; u < kWarpBatch; ++u) {
      if (x[u] != 0) {
        lo = x[u] < lo ? x[u] : lo;
        hi = x[u] > hi ? x[u] : hi;
      }
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    const uint64_t l2 = __shfl_xor_sync(0xFFFFFFFFu, lo, off), h2 = __shfl_xor_sync(0xFFFFFFFFu, hi, off);
    lo = l2 < lo ? l2 : lo;
    hi = h2 > hi ? h2 : hi;
  }
  if (lo == hi) return hi;
  int top = 63 - __clzll(static_cast<long long>(lo ^ hi));
  uint64_t prefix = hi & (top == 63 ? 0 : (~uint64_t(0) << (top + 1)));
  uint32_t remaining = uint32_t(want);
  uint4* bins = reinterpret_cast<uint4*>(hist) + 2 * lane;
  while (top >= 0) {
    const int width = top + 1 < 8 ? top + 1 : 8;
    const int shift = top + 1 - width;
    const uint64_t fixed = top == 63 ? 0 : (~uint64_t(0) << (top + 1));
    __syncwarp();  // the previous pass's bins are read
    bins[0] = make_uint4(0, 0, 0, 0);
    bins[1] = make_uint4(0, 0, 0, 0);
    __syncwarp();
    for (int i0 = 0; i0 < n; i0 += 32 * kWarpBatch) {
      uint64_t x[kWarpBatch];
      warp_batch(buf, i0, n, x);
#pragma unroll
      for (int u = 0; u < kWarpBatch; ++u)
        if (x[u] != 0 && (x[u] & fixed) == prefix) atomicAdd(&hist[uint32_t(x[u] >> shift) & 0xFFu], 1u);
    }
    __syncwarp();
    const uint4 a = bins[0], b = bins[1];
    const uint32_t h[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    uint32_t total = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) total += h[i];
    uint32_t s = total;  // becomes the sum over lanes >= this one
#pragma unroll
    for (int off = 1; off < 32; off *= 2) {
      const uint32_t o = __shfl_down_sync(0xFFFFFFFFu, s, off);
      if (lane + off < 32) s += o;
    }
    // Walk this lane's bins from the top: the bin where the count above reaches `remaining`.
    uint32_t above = s - total, digit = 0, at_above = 0, in_bin = 0;
    bool found = false;
#pragma unroll
    for (int i = 7; i >= 0; --i) {
      if (!found && above < remaining && above + h[i] >= remaining) {
        found = true;
        digit = uint32_t(8 * lane + i);
        at_above = above;
        in_bin = h[i];
      }
      above += h[i];
    }
    const int src = __ffs(__ballot_sync(0xFFFFFFFFu, found)) - 1;
    digit = __shfl_sync(0xFFFFFFFFu, digit, src);
    at_above = __shfl_sync(0xFFFFFFFFu, at_above, src);
    in_bin = __shfl_sync(0xFFFFFFFFu, in_bin, src);
    remaining -= at_above;
    prefix |= uint64_t(digit) << shift;
    if (in_bin == remaining) break;  // the whole bin is wanted
    top = shift - 1;
  }
  return prefix;
}

// Moves the nonzero keys >= cut of buf[0..n) to its front, in order, and
// returns how many. In place: a key moves to a slot at or before its own,
// and a batch is read before any of it is written.
__device__ __forceinline__ int warp_compact(uint64_t* buf, int n, uint64_t cut) {
  const uint32_t below = lanes_below();
  int count = 0;
  for (int i0 = 0; i0 < n; i0 += 32 * kWarpBatch) {
    uint64_t x[kWarpBatch];
    warp_batch(buf, i0, n, x);
    __syncwarp();  // the batch is read before any of it is written
#pragma unroll
    for (int u = 0; u < kWarpBatch; ++u) {
      const bool take = x[u] != 0 && x[u] >= cut;
      const uint32_t m = __ballot_sync(0xFFFFFFFFu, take);
      if (take) buf[count + __popc(m & below)] = x[u];
      count += __popc(m);
    }
  }
  __syncwarp();
  return count;
}

// An appended (score, position) as stored, unpacked: the packing (pack) is
// left to warp_gather, off the appending path.
__device__ __forceinline__ uint64_t raw_key(float score, uint32_t pos) {
  return (uint64_t(__float_as_uint(score)) << 32) | pos;
}

// Gathers a list's segments behind its st.count kept keys, packing them, by
// one warp, and sets st.count: segment w is the count[w] <= seg raw keys at
// buf + kept + w * seg (kept >= st.count). In place: a key moves to a slot at or
// before its own (the keys before segment w number at most kept + w * seg),
// and a batch is read before any of it is written.
__device__ __forceinline__ void warp_gather(uint64_t* buf, int kept, int seg, const uint32_t* count, int segments,
                                            Stream& st) {
  int n = int(st.count);
  for (int w = 0; w < segments; ++w) {
    const int c = int(count[w]);
    const uint64_t* src = buf + kept + w * seg;
    for (int i0 = 0; i0 < c; i0 += 32 * kWarpBatch) {
      uint64_t x[kWarpBatch];
      warp_batch(src, i0, c, x);
      __syncwarp();  // the batch is read before any of it is written
      const int i = i0 + int(lane_id());
#pragma unroll
      for (int u = 0; u < kWarpBatch; ++u)
        if (i + 32 * u < c) buf[n + i + 32 * u] = pack(__uint_as_float(uint32_t(x[u] >> 32)), uint32_t(x[u]));
    }
    n += c;
  }
  __syncwarp();
  if (lane_id() == 0) st.count = uint32_t(n);
  __syncwarp();
}

// Cuts st's list buf (st.count > k keys) to its k best and raises st.bound to
// the cut, by one warp.
__device__ __forceinline__ void warp_fold(int k, uint64_t* buf, Stream& st, uint32_t* hist) {
  const int n = int(st.count);
  const uint64_t cut = warp_select_threshold(buf, n, k, hist);
  warp_compact(buf, n, cut);
  if (lane_id() == 0) {
    st.count = uint32_t(k);
    st.bound = cut;
  }
}

// Writes the n <= R * 32 keys of buf (unique, nonzero) to output row `row`,
// descending: a key's slot is the number of keys above it (broadcast reads,
// no barrier); slots [n, k) are padding.
template <int R>
__device__ void warp_rank_write(const Params& p, const uint64_t* buf, int n, int64_t row) {
  const int lane = int(lane_id());
  uint64_t x[R];
  int rank[R];
#pragma unroll
  for (int u = 0; u < R; ++u) {
    x[u] = u * 32 + lane < n ? buf[u * 32 + lane] : ~uint64_t(0);  // past n: above every key, no rank
    rank[u] = 0;
  }
#pragma unroll 4
  for (int j = 0; j < n; ++j) {
    const uint64_t y = buf[j];
#pragma unroll
    for (int u = 0; u < R; ++u) rank[u] += y > x[u];
  }
  float* scores = p.scores + row * p.k;
  int64_t* indices = p.indices + row * p.k;
#pragma unroll
  for (int u = 0; u < R; ++u) {
    if (u * 32 + lane < n) {
      scores[rank[u]] = packed_score(x[u]);
      indices[rank[u]] = packed_pos(x[u]);
    }
  }
  for (int i = n + lane; i < p.k; i += 32) {
    scores[i] = -INFINITY;
    indices[i] = -1;
  }
}

// The exact top-k of st's list buf, sorted, to output row `row`, by one warp
// (p.k <= 256).
__device__ void warp_finish(const Params& p, uint64_t* buf, const Stream& st, uint32_t* hist, int64_t row) {
  int n = int(st.count);
  if (n > p.k) n = warp_compact(buf, n, warp_select_threshold(buf, n, p.k, hist));
  if (n <= 32) warp_rank_write<1>(p, buf, n, row);
  else if (n <= 64) warp_rank_write<2>(p, buf, n, row);
  else if (n <= 128) warp_rank_write<4>(p, buf, n, row);
  else warp_rank_write<8>(p, buf, n, row);
}

// The streaming kernels' grid: one CTA per (row, span), as begin_span reads it.
inline dim3 span_grid(const Params& p, int64_t rows) { return dim3(unsigned(rows * p.splits)); }

// Launches kernel(p) with `smem` bytes of dynamic shared memory, opting in
// where static + dynamic could pass the default 48 KB (once per kernel and
// size and device: the attribute stays set).
template <typename Kernel, typename P>
void launch_with_smem(Kernel kernel, dim3 grid, size_t smem, cudaStream_t stream, const P& p,
                      int threads = kThreads) {
  if (smem + kMaxStaticSmem > 48 * 1024) {
    int device = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    static std::mutex lock;
    static std::map<std::pair<const void*, int>, size_t> opted;  // (kernel, device) -> the largest size set
    const std::lock_guard<std::mutex> guard(lock);
    size_t& have = opted[{reinterpret_cast<const void*>(kernel), device}];
    if (have < smem) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      have = smem;
    }
  }
  kernel<<<grid, threads, smem, stream>>>(p);
}

}  // namespace
}  // namespace dare
