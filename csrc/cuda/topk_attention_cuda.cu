// Fused CUDA kernel: scores + exact top-k in one pass over the keys.
//
// Each CTA owns one chunk of one row (row = (b, t)). It streams the chunk's
// keys with 16-byte loads (G threads per key, several keys in flight per
// thread) and keeps the float32 scores as order-preserving uint32 keys in
// shared memory. Selection (block_topk) on packed (score, position) keys:
// the k-th largest of 256 group maxima bounds the k-th largest key from below,
// the few keys above it are compacted, and either ranked against each other
// (<= 256 candidates: rank = output slot, no sort) or cut by an 8-bit radix
// select and bitonic-sorted. The selection of one CTA overlaps the key stream
// of the other CTAs resident on the SM. Rows split into several chunks (long
// rows, or few rows: B = 1..16 still fills the GPU) leave sorted partial lists
// in a workspace that a second, small kernel merges (merge_topk_kernel).
//
// Measured on an H200 (bench/RESULTS.md): 95% of copy bandwidth at d = 128,
// 58% at d = 16, where the selection phase is instruction-bound.
//
// k above kMaxK takes an exact ATen path (float32 scores, one int64 sort).
#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include "../check.h"
#include "../order.h"

namespace dare {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxK = 1024;
constexpr int kMaxChunk = 4096;  // default positions per CTA (24 KB of shared memory)
constexpr int kMinChunk = 512;
constexpr int kUnroll = 4;       // keys in flight per thread
constexpr int kRankMergeMaxLists = 4;
constexpr size_t kMergeSmem = 40 * 1024;  // below the 48 KB default dynamic limit, with the static part

// ---------------------------------------------------------------------------
// Loading keys: 16 bytes -> float32.

template <typename T>
struct Vec;  // elements per 16-byte load and their conversion

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

template <>
struct Vec<__nv_bfloat16> {
  static constexpr int N = 8;
  __device__ __forceinline__ static void to_float(const uint4& v, float* f) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xFFFF0000u);
    }
  }
};

template <>
struct Vec<__half> {
  static constexpr int N = 8;
  __device__ __forceinline__ static void to_float(const uint4& v, float* f) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 p = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
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

struct Params {
  const void* keys;        // (B, L, d) contiguous
  const void* query;       // (B*T, d) contiguous
  const int64_t* lengths;  // (B,) int64 or nullptr; clamped to [0, L]
  float* scores;           // (B*T, k)
  int64_t* indices;        // (B*T, k)
  uint64_t* workspace;     // (B*T, S, k) packed partial lists when S > 1
  int64_t T, L, d;
  int k, chunk, splits, kpow2;
  bool merge_in_smem;
  float scale;
};

__device__ __forceinline__ int64_t row_length(const Params& p, int64_t b) {
  if (p.lengths == nullptr) return p.L;
  const int64_t len = p.lengths[b];
  return len < 0 ? 0 : (len > p.L ? p.L : len);
}

// ---------------------------------------------------------------------------
// Scores of one chunk into shared memory as order keys.

// D > 0: d == D, 16-byte aligned rows; G threads share a key, each loading
// NV vectors, then a shuffle reduction inside the group.
template <typename T, int D>
__device__ __forceinline__ void score_chunk(const Params& p, const T* __restrict__ keys,
                                            const T* __restrict__ q, int n, uint32_t* skey) {
  constexpr int VN = Vec<T>::N;
  constexpr int NVEC = D / VN;                   // 16-byte vectors per key
  constexpr int G = NVEC < 32 ? NVEC : 32;       // threads per key
  constexpr int NV = NVEC / G;                   // vectors per thread
  constexpr int PER_PASS = kThreads / G;         // keys per CTA pass
  const int lane = threadIdx.x % G;
  const int slot = threadIdx.x / G;
  float qr[NV][VN];
#pragma unroll
  for (int v = 0; v < NV; ++v) {
#pragma unroll
    for (int e = 0; e < VN; ++e) qr[v][e] = to_float(q[(v * G + lane) * VN + e]);
  }
  const uint4* base = reinterpret_cast<const uint4*>(keys);
  for (int j0 = 0; j0 < n; j0 += PER_PASS * kUnroll) {
    uint4 raw[kUnroll][NV];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = j0 + u * PER_PASS + slot;
#pragma unroll
      for (int v = 0; v < NV; ++v)
        raw[u][v] = j < n ? __ldg(base + int64_t(j) * NVEC + v * G + lane) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float acc = 0.f;
#pragma unroll
      for (int v = 0; v < NV; ++v) {
        float f[VN];
        Vec<T>::to_float(raw[u][v], f);
#pragma unroll
        for (int e = 0; e < VN; ++e) acc = fmaf(qr[v][e], f[e], acc);
      }
#pragma unroll
      for (int off = G / 2; off > 0; off /= 2) acc += __shfl_xor_sync(0xFFFFFFFFu, acc, off, G);
      const int j = j0 + u * PER_PASS + slot;
      if (lane == 0 && j < n) skey[j] = score_key(acc * p.scale);
    }
  }
}

// Any d, any alignment: one thread per key, scalar loads.
template <typename T>
__device__ __forceinline__ void score_chunk_generic(const Params& p, const T* __restrict__ keys,
                                                    const T* __restrict__ q, int n, uint32_t* skey) {
  for (int j = threadIdx.x; j < n; j += kThreads) {
    const T* x = keys + int64_t(j) * p.d;
    float acc = 0.f;
    for (int64_t c = 0; c < p.d; ++c) acc = fmaf(to_float(q[c]), to_float(x[c]), acc);
    skey[j] = score_key(acc * p.scale);
  }
}

// ---------------------------------------------------------------------------
// Block-wide selection over unique packed keys.

struct SelectShared {
  uint32_t hist[256];
  uint32_t warp_sums[kThreads / 32];
  uint32_t digit, above, in_bin;
  uint32_t count;
  uint32_t tau;
};

// Slot for this thread's item in a block-wide compaction: one shared atomic
// per warp instead of one per item.
__device__ __forceinline__ uint32_t compact_slot(bool take, uint32_t* counter) {
  const uint32_t mask = __ballot_sync(0xFFFFFFFFu, take);
  const int lane = threadIdx.x % 32;
  uint32_t base = 0;
  if (lane == 0 && mask) base = atomicAdd(counter, uint32_t(__popc(mask)));
  base = __shfl_sync(0xFFFFFFFFu, base, 0);
  return base + __popc(mask & ((1u << lane) - 1u));
}

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

// Returns T such that exactly `want` of the nonzero keys src(i), i < n, are
// >= T, given the nonzero keys are unique and at least `want` of them exist.
//
// With score_bits_only, it stops after the 32 score bits and returns a lower
// bound (at least `want` keys are >= it), in at most 4 passes.
template <typename Src>
__device__ uint64_t select_threshold(Src src, int n, int want, SelectShared& sh,
                                     bool score_bits_only = false) {
  uint64_t prefix = 0;
  uint32_t remaining = want;
  const int last_shift = score_bits_only ? 32 : 0;
  for (int shift = 56; shift >= last_shift; shift -= 8) {
    const uint64_t hi_mask = shift == 56 ? 0 : (~uint64_t(0) << (shift + 8));
    sh.hist[threadIdx.x] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += kThreads) {
      const uint64_t x = src(i);
      // Zero is the merge's padding, never a real key.
      if (x != 0 && (x & hi_mask) == prefix) atomicAdd(&sh.hist[(x >> shift) & 0xFF], 1u);
    }
    __syncthreads();
    const uint32_t h = sh.hist[threadIdx.x];
    const uint32_t s = suffix_sum(h, sh);
    if (s >= remaining && s - h < remaining) {
      sh.digit = threadIdx.x;
      sh.above = s - h;
      sh.in_bin = h;
    }
    __syncthreads();
    remaining -= sh.above;
    prefix |= uint64_t(sh.digit) << shift;
    // The whole bin is wanted: every key below it is out, so the bin's
    // smallest possible key is the threshold.
    if (sh.in_bin == remaining) return prefix;
    __syncthreads();  // the next pass clears hist
  }
  return prefix;
}

// Writes the `want` keys >= threshold to cand[0, want), zeros up to kpow2, and
// sorts cand descending.
template <typename Src>
__device__ void gather_sorted(Src src, int n, uint64_t threshold, uint64_t* cand, int kpow2,
                              SelectShared& sh) {
  if (threadIdx.x == 0) sh.count = 0;
  for (int i = threadIdx.x; i < kpow2; i += kThreads) cand[i] = 0;
  __syncthreads();
  for (int i0 = 0; i0 < n; i0 += kThreads) {  // uniform trip count: compact_slot needs whole warps
    const int i = i0 + threadIdx.x;
    const uint64_t x = i < n ? src(i) : 0;
    const bool take = x >= threshold && x != 0;
    const uint32_t slot = compact_slot(take, &sh.count);
    if (take) cand[slot] = x;
  }
  __syncthreads();
  // Bitonic sort, descending.
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

// The `want` largest of the unique nonzero keys src(0..n), sorted descending,
// into cand[0, kpow2) (zero-padded); want <= number of nonzero keys.
//
// Prefilter (want <= kThreads, n > 2·kThreads, cidx given): thread t's group is
// i = t, t + kThreads, ...; the want-th largest group maximum tau bounds the
// want-th largest key from below, since want groups each hold a key >= tau.
// Only keys >= tau (for random scores a small multiple of want) are compacted
// into cidx and go through the exact select, so the per-key selection cost is
// one max and one compare.
// take_all: want equals the number of nonzero keys (no selection needed).
template <typename Src>
__device__ void block_topk(Src src, int n, int want, bool take_all, uint64_t* cand, int kpow2,
                           uint16_t* cidx, SelectShared& sh, uint64_t* gmax) {
  if (!take_all && cidx != nullptr && want <= kThreads && n > 2 * kThreads) {
    uint64_t m = 0;
    for (int i = threadIdx.x; i < n; i += kThreads) m = max(m, src(i));
    gmax[threadIdx.x] = m;
    const int groups = __syncthreads_count(m != 0);
    if (groups >= want) {
      const uint64_t tau = select_threshold([&](int i) { return gmax[i]; }, kThreads, want, sh,
                                            /*score_bits_only=*/true);
      if (threadIdx.x == 0) sh.count = 0;
      __syncthreads();
      for (int i0 = 0; i0 < n; i0 += kThreads) {
        const int i = i0 + threadIdx.x;
        const bool take = i < n && src(i) >= tau;
        const uint32_t slot = compact_slot(take, &sh.count);
        if (take) cidx[slot] = uint16_t(i);
      }
      __syncthreads();
      const int ncand = int(sh.count);
      if (ncand <= kThreads) {
        // Few candidates: each one's rank among them is its output slot; no
        // select, no sort, one barrier. gmax is free again.
        const uint64_t x = threadIdx.x < ncand ? src(cidx[threadIdx.x]) : 0;
        __syncthreads();  // all have read gmax (tau) and sh.count
        gmax[threadIdx.x] = x;
        for (int i = threadIdx.x; i < kpow2; i += kThreads) cand[i] = 0;
        __syncthreads();
        if (threadIdx.x < ncand) {
          int rank = 0;
          for (int u = 0; u < ncand; ++u) rank += gmax[u] > x;
          if (rank < want) cand[rank] = x;
        }
        __syncthreads();
        return;
      }
      __syncthreads();  // all have read sh.count before gather_sorted resets it
      auto picked = [&](int i) -> uint64_t { return src(cidx[i]); };
      const uint64_t threshold = ncand == want ? 1 : select_threshold(picked, ncand, want, sh);
      gather_sorted(picked, ncand, threshold, cand, kpow2, sh);
      return;
    }
    __syncthreads();
  }
  const uint64_t threshold = take_all ? 1 : select_threshold(src, n, want, sh);
  gather_sorted(src, n, threshold, cand, kpow2, sh);
}

__device__ __forceinline__ void write_final(const Params& p, int64_t row, const uint64_t* cand) {
  for (int i = threadIdx.x; i < p.k; i += kThreads) {
    const uint64_t x = cand[i];
    p.scores[row * p.k + i] = x == 0 ? -INFINITY : packed_score(x);
    p.indices[row * p.k + i] = x == 0 ? -1 : packed_pos(x);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) chunk_topk_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint64_t* cand = reinterpret_cast<uint64_t*>(smem_raw);           // kpow2
  uint32_t* skey = reinterpret_cast<uint32_t*>(cand + p.kpow2);       // chunk
  uint16_t* cidx = reinterpret_cast<uint16_t*>(skey + p.chunk);        // chunk
  __shared__ SelectShared sh;
  __shared__ uint64_t gmax[kThreads];

  const int64_t row = blockIdx.x / p.splits;
  const int c = blockIdx.x % p.splits;
  const int64_t b = row / p.T;
  const int64_t start = int64_t(c) * p.chunk;
  const int64_t len = row_length(p, b);
  const int n = int(len > start ? (len - start < p.chunk ? len - start : p.chunk) : 0);

  const T* keys = static_cast<const T*>(p.keys) + (b * p.L + start) * p.d;
  const T* q = static_cast<const T*>(p.query) + row * p.d;
  if constexpr (D > 0) {
    score_chunk<T, D>(p, keys, q, n, skey);
  } else {
    score_chunk_generic<T>(p, keys, q, n, skey);
  }
  __syncthreads();

  const uint32_t pos0 = uint32_t(start);
  auto src = [&](int i) -> uint64_t { return (uint64_t(skey[i]) << 32) | uint64_t(~(pos0 + uint32_t(i))); };
  const int want = n < p.k ? n : p.k;
  block_topk(src, n, want, want == n, cand, p.kpow2, cidx, sh, gmax);

  if (p.splits == 1) {
    write_final(p, row, cand);
  } else {
    uint64_t* out = p.workspace + (row * p.splits + c) * p.k;
    for (int i = threadIdx.x; i < p.k; i += kThreads) out[i] = cand[i];
  }
}

// Merges a row's `splits` sorted partial lists, staged in shared memory when
// they fit. Few lists (the common large-batch case): an element's rank in the
// union is its index in its own list plus, per other list, the number of
// larger elements (a binary search); ranks below k are output slots, so there
// is no select and no sort. Many lists (small batches split rows finely): the
// rank work grows with lists², so the block select takes over.
__global__ void __launch_bounds__(kThreads) merge_topk_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ SelectShared sh;
  __shared__ uint64_t gmax[kThreads];
  const int64_t row = blockIdx.x;
  const int n = p.splits * p.k;
  uint64_t* cand = reinterpret_cast<uint64_t*>(smem_raw);  // kpow2 (select path)
  uint64_t* staged = cand + p.kpow2;                       // n when staged
  uint16_t* cidx = reinterpret_cast<uint16_t*>(staged + n);  // n when staged
  const uint64_t* lists = p.workspace + row * n;
  if (p.merge_in_smem) {
    for (int i = threadIdx.x; i < n; i += kThreads) staged[i] = lists[i];
    __syncthreads();
    lists = staged;
  }
  const int64_t len = row_length(p, row / p.T);
  int64_t valid = 0;  // real candidates: min(k, positions) per chunk, the rest is zero padding
  for (int c = 0; c < p.splits; ++c) {
    const int64_t nc = len - int64_t(c) * p.chunk;
    if (nc > 0) valid += min(min(nc, int64_t(p.chunk)), int64_t(p.k));  // what chunk c wrote
  }
  if (p.splits > kRankMergeMaxLists) {
    const int want = int(valid < p.k ? valid : p.k);
    block_topk([&](int i) { return lists[i]; }, n, want, valid <= p.k, cand, p.kpow2,
               p.merge_in_smem ? cidx : nullptr, sh, gmax);
    write_final(p, row, cand);
    return;
  }
  float* out_s = p.scores + row * p.k;
  int64_t* out_i = p.indices + row * p.k;
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const uint64_t x = lists[i];
    if (x == 0) continue;
    const int own = i / p.k;
    int rank = i - own * p.k;
    for (int c = 0; c < p.splits && rank < p.k; ++c) {
      if (c == own) continue;
      const uint64_t* list = lists + c * p.k;
      int lo = 0, hi = p.k;
      while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (list[mid] > x) lo = mid + 1; else hi = mid;
      }
      rank += lo;
    }
    if (rank < p.k) {
      out_s[rank] = packed_score(x);
      out_i[rank] = packed_pos(x);
    }
  }
  for (int i = int(valid < p.k ? valid : p.k) + threadIdx.x; i < p.k; i += kThreads) {
    out_s[i] = -INFINITY;
    out_i[i] = -1;
  }
}

// ---------------------------------------------------------------------------
// Host side.

// DARE_CUDA_MAX_CHUNK overrides kMaxChunk (a tuning knob for benchmarks).
int64_t max_chunk() {
  static const int64_t value = [] {
    const char* env = std::getenv("DARE_CUDA_MAX_CHUNK");
    const int64_t v = env ? std::atoll(env) : kMaxChunk;
    return std::min<int64_t>(std::max<int64_t>(v, kMinChunk), 16384);  // uint16 positions
  }();
  return value;
}

int sm_count(int device) {
  static int cached[64] = {0};
  if (device < 64 && cached[device]) return cached[device];
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  if (device < 64) cached[device] = n;
  return n;
}

template <typename T>
void launch(const Params& p, int64_t rows, size_t smem, bool vectorised, cudaStream_t stream) {
  const dim3 grid(unsigned(rows * p.splits));
#define DARE_LAUNCH(D)                                                                           \
  do {                                                                                           \
    if (smem > 48 * 1024)                                                                        \
      C10_CUDA_CHECK(cudaFuncSetAttribute(chunk_topk_kernel<T, D>,                               \
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem))); \
    chunk_topk_kernel<T, D><<<grid, kThreads, smem, stream>>>(p);                                \
  } while (0)
  if (vectorised && p.d == 16) DARE_LAUNCH(16);
  else if (vectorised && p.d == 32) DARE_LAUNCH(32);
  else if (vectorised && p.d == 64) DARE_LAUNCH(64);
  else if (vectorised && p.d == 128) DARE_LAUNCH(128);
  else if (vectorised && p.d == 256) DARE_LAUNCH(256);
  else DARE_LAUNCH(0);
#undef DARE_LAUNCH
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Exact for any k: float32 scores, positions past the length masked, one
// descending sort of int64 keys that encode (score order, -position).
std::tuple<at::Tensor, at::Tensor> large_k(const at::Tensor& Q, const at::Tensor& K, int64_t k,
                                           const at::Tensor& len, double scale, const Shape& s) {
  at::Tensor scores = at::bmm(Q.view({s.B, s.T, s.d}).to(at::kFloat), K.to(at::kFloat).transpose(1, 2));
  scores = scores * scale + 0.0;  // -0 -> +0: both zeros tie
  at::Tensor u = scores.view(at::kInt).to(at::kLong) & 0xFFFFFFFFLL;
  const at::Tensor nan = scores.isnan();
  u = at::where(u == 0x80000000LL, at::zeros_like(u), u);
  at::Tensor key = at::where((u & 0x80000000LL).ne(0), u ^ 0xFFFFFFFFLL, u | 0x80000000LL);
  key = at::where(nan, at::full_like(key, 0xFFFFFFFFLL), key);
  at::Tensor pos = at::arange(s.L, K.options().dtype(at::kLong));
  at::Tensor packed = at::bitwise_left_shift(key, 32) | (0xFFFFFFFFLL - pos);  // as uint64; shift to signed order:
  packed = packed ^ (int64_t(1) << 63);
  if (len.defined()) {
    const at::Tensor valid = pos.view({1, 1, s.L}) < len.clamp(0, s.L).view({s.B, 1, 1});
    packed = at::where(valid, packed, at::full_like(packed, std::numeric_limits<int64_t>::min()));
  }
  at::Tensor top = std::get<0>(at::sort(packed, /*stable=*/false, /*dim=*/-1, /*descending=*/true))
                       .narrow(-1, 0, k);
  const at::Tensor pad = top.eq(std::numeric_limits<int64_t>::min());
  top = top ^ (int64_t(1) << 63);
  at::Tensor idx = 0xFFFFFFFFLL - (top & 0xFFFFFFFFLL);
  at::Tensor hi = at::bitwise_right_shift(top, 32) & 0xFFFFFFFFLL;
  at::Tensor bits = at::where((hi & 0x80000000LL).ne(0), hi & 0x7FFFFFFFLL, hi ^ 0xFFFFFFFFLL);
  bits = at::where(bits >= 0x80000000LL, bits - 0x100000000LL, bits);  // as int32 bit pattern
  at::Tensor out = bits.to(at::kInt).view(at::kFloat);
  out = at::where(pad, at::full_like(out, -std::numeric_limits<float>::infinity()), out);
  idx = at::where(pad, at::full_like(idx, -1), idx);
  return {out, idx};
}

std::tuple<at::Tensor, at::Tensor> topk_attention_cuda(const at::Tensor& query, const at::Tensor& keys,
                                                       int64_t k, const std::optional<at::Tensor>& lengths,
                                                       double scale) {
  // Length values are not read on the host (no sync, graph-capturable): the
  // kernel clamps them to [0, L].
  const Shape s = check_inputs(query, keys, k, lengths, /*check_length_values=*/false);
  const c10::cuda::CUDAGuard guard(keys.device());
  auto [scores, indices] = empty_outputs(keys, s, k);
  const int64_t rows = s.B * s.T;
  if (rows == 0) return {scores, indices};

  const at::Tensor K = keys.contiguous();
  const at::Tensor Q = query.reshape({rows, s.d}).contiguous();
  at::Tensor len;
  if (lengths.has_value()) len = lengths->to(at::kLong).contiguous();

  if (k > kMaxK) {
    auto [sc, ix] = large_k(Q, K, k, len, scale, s);
    scores.copy_(sc.view(scores.sizes()));
    indices.copy_(ix.view(indices.sizes()));
    return {scores, indices};
  }

  // Chunking: at most kMaxChunk positions per CTA; more, shorter chunks (down
  // to kMinChunk) when there are too few rows to fill the GPU.
  const int64_t target_ctas = 4 * int64_t(sm_count(keys.get_device()));
  int64_t splits = (s.L + max_chunk() - 1) / max_chunk();
  const int64_t max_splits = std::max<int64_t>(splits, (s.L + kMinChunk - 1) / kMinChunk);
  if (rows * splits < target_ctas)
    splits = std::min(max_splits, (target_ctas + rows - 1) / rows);
  const int64_t chunk = (s.L + splits - 1) / splits;
  splits = (s.L + chunk - 1) / chunk;
  int kpow2 = 1;
  while (kpow2 < k) kpow2 *= 2;

  at::Tensor workspace;
  if (splits > 1) workspace = at::empty({rows, splits, k}, keys.options().dtype(at::kLong));
  Params p{K.const_data_ptr(), Q.const_data_ptr(), len.defined() ? len.const_data_ptr<int64_t>() : nullptr,
           scores.mutable_data_ptr<float>(), indices.mutable_data_ptr<int64_t>(),
           workspace.defined() ? reinterpret_cast<uint64_t*>(workspace.mutable_data_ptr<int64_t>()) : nullptr,
           s.T, s.L, s.d, int(k), int(chunk), int(splits), kpow2, false, static_cast<float>(scale)};
  const size_t merge_staged = size_t(kpow2) * sizeof(uint64_t) +
                              size_t(splits) * k * (sizeof(uint64_t) + sizeof(uint16_t));
  p.merge_in_smem = merge_staged <= kMergeSmem && splits * k < 65536;

  const int64_t vec_bytes = 16;
  const bool vectorised = reinterpret_cast<uintptr_t>(K.const_data_ptr()) % vec_bytes == 0 &&
                          (s.d * int64_t(K.element_size())) % vec_bytes == 0;
  const size_t smem = size_t(kpow2) * sizeof(uint64_t) + size_t(chunk) * (sizeof(uint32_t) + sizeof(uint16_t));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (K.scalar_type()) {
    case at::kFloat: launch<float>(p, rows, smem, vectorised, stream); break;
    case at::kHalf: launch<__half>(p, rows, smem, vectorised, stream); break;
    case at::kBFloat16: launch<__nv_bfloat16>(p, rows, smem, vectorised, stream); break;
    default: TORCH_CHECK(false, "topk_attention: unreachable dtype");
  }
  if (splits > 1) {
    const size_t merge_smem = p.merge_in_smem ? merge_staged : size_t(kpow2) * sizeof(uint64_t);
    merge_topk_kernel<<<unsigned(rows), kThreads, merge_smem, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {scores, indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(dare, CUDA, m) { m.impl("topk_attention", &topk_attention_cuda); }

}  // namespace dare
