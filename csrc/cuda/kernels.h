// The interface between the ops' host code (*.cpp) and the CUDA kernels
// (topk_kernel.cuh, targets_kernel.cuh, embedding_kernel.cuh): their
// parameters, limits and launchers. Each kernel is instantiated once per dtype
// (*_kernel_<dtype>.cu): they compile in parallel, and none of them parses ATen.
// The device side they share (CTA set-up, selection, launch) is select.cuh.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "../fields.h"

namespace dare {

constexpr int kThreads = 256;   // per CTA
constexpr int kCtasPerSm = 4;   // the kernel's launch bounds: CTAs resident per SM
constexpr int kMaxK = 1024;     // larger k takes the ATen path
// Static shared memory of any of the kernels at most (the many-targets kernel's
// warp bins and segment counts: ~8.9 KB); the rest of a CTA's shared memory is dynamic.
constexpr size_t kMaxStaticSmem = 16 * 1024;

struct Params {
  const void* keys;        // (B, L, d) contiguous; jagged: (N, d), L = N
  const void* query;       // (B*T, d) contiguous
  const int64_t* lengths;  // (B,) int64 or nullptr; clamped to [0, L]
  float* scores;           // (B*T, k)
  int64_t* indices;        // (B*T, k)
  uint64_t* partial;       // (B*T, splits, k) packed top-k lists (unsorted, zero-padded) when splits > 1
  uint32_t* tickets;       // (B*T,) zeroed before the launch when splits > 1
  int64_t T, L, d;
  int k, span, splits, kpow2, cap;  // cap: candidate-list slots
  float scale;
  int group = 1;  // targets per CTA (the many-targets kernel)
  int warps = 8;   // warps a CTA of the many-targets kernel: 8 or 16
  bool segments = false;  // the many-targets kernel's lists: a segment a warp, not one shared count a list
  const int64_t* offsets = nullptr;  // (B+1,) or nullptr: jagged rows, clamped to [0, N]
  const bool* mask = nullptr;        // (b, j) at b * mask_sb + j * mask_sl, or nullptr
  int64_t mask_sb = 0, mask_sl = 0;
};

// Bytes of a CTA's dynamic shared memory, the streaming kernels': p.group candidate
// lists of p.cap keys, then p.kpow2 keys of selection scratch.
inline size_t smem_bytes(const Params& p) { return (size_t(p.group) * p.cap + p.kpow2) * sizeof(uint64_t); }

// Launches the kernel for keys of type T (float, __half or __nv_bfloat16) over
// rows * p.splits CTAs with `smem` (smem_bytes) bytes of dynamic shared memory,
// the d-specialised variant when `vectorised` (16-byte aligned
// rows), and checks the launch.
template <typename T>
void launch_topk(const Params& p, int64_t rows, size_t smem, bool vectorised, cudaStream_t stream);

// The many-targets kernel (targets_kernel.cuh): queries (B, T, d) with
// T >= kMinTargets, 16-bit keys with d in {16, 32, 64, 128} or float keys with
// d in {16, 32}, 16-byte aligned rows, k <= kMaxTargetsK (the host's
// targets_group decides which calls take it). A CTA takes p.group <= 8
// targets of one row.
constexpr int kMaxTargetsK = 256;  // larger k takes launch_topk
constexpr int kMinTargets = 8;     // fewer targets per row take launch_topk

// Keys per tile of the many-targets kernel with `warps` warps for keys of
// key_bytes: 32 blocks of 16 keys up to 64-byte keys, 16 for 128-byte keys, 8
// for 256-byte ones, and at least a block a warp.
constexpr int targets_tile(int64_t key_bytes, int warps) {
  const int blocks = key_bytes <= 64 ? 32 : int(2048 / key_bytes);
  return 16 * (blocks > warps ? blocks : warps);
}

// Launches it over B * ceil(T / p.group) CTAs of p.warps warps with `smem`
// bytes of dynamic shared memory (p.group lists of p.cap keys) and checks the
// launch. T is __half, __nv_bfloat16 or float.
template <typename T>
void launch_targets(const Params& p, int64_t B, size_t smem, cudaStream_t stream);

// topk_attention_embedding (embedding_kernel.cuh): key j of row b is the
// concatenation of F fields' table rows, gathered by id. A key is `units`
// vectors of UB bytes (16, 8 or 4: what every field's row size and table
// alignment allow); G lanes (a power of two, 2..32, G >= units) score one key.
constexpr int kMaxUnits = 32;  // units per key of the fused path; wider keys take the looked-up path
// Many targets (T >= kMinTargets) gather the keys once when they take at most this many bytes.
constexpr int64_t kGatherMaxBytes = int64_t(1) << 30;

struct EmbedField {
  const void* table;           // (n, row) contiguous rows
  const void* ids;             // int32 or int64; (b, j) at b * stride_b + j * stride_l
  int64_t n, stride_b, stride_l;
  int units, start;            // UB-byte vectors per row; first vector of the field in the key
  bool ids64;
};

struct EmbedParams {
  Params base;  // base.query: (B*T, d) contiguous; base.keys unused
  EmbedField fields[kMaxFields];
  int F, units, group;
};

// Launches the embedding kernel for tables of type T with UB-byte vectors over
// rows * p.base.splits CTAs with `smem` (smem_bytes) bytes of dynamic shared
// memory and checks the launch.
template <typename T>
void launch_embedding(const EmbedParams& p, int unit_bytes, int64_t rows, size_t smem, cudaStream_t stream);

// Writes the keys themselves, (positions, units * unit_bytes bytes) contiguous:
// position p of row b = p / L, index j = p % L (jagged: L = positions, the ids'
// stream), out-of-range ids as NaN vectors; one launch, checked.
template <typename T>
void launch_gather_keys(const EmbedParams& p, int unit_bytes, int64_t positions, int64_t L, void* keys,
                        cudaStream_t stream);

// Both ops' backward (backward_kernel.cu): one CTA of kThreads per target row r
// (R = B*T rows) over its k selected entries. The query's gradient in float32,
// summed in a fixed order (deterministic); a table's gradient (embedding op) or
// the keys' (keys op) in one of four forms: none; dense float32 sums (atomics
// into a zeroed buffer of the table's shape); per slot (one row index and value
// row per entry, in the table's dtype; a padding entry's row -1, which
// launch_fix_slot_rows then replaces); written (each entry's row stored once, in
// the table's dtype, into a zeroed gradient: the keys op with one target per
// padded row, where no two entries share a key).
enum class TableGrad : int { kNone = 0, kDense = 1, kPerSlot = 2, kWrite = 3 };

struct BackwardField {
  const void* table;  // (n, d) contiguous rows (keys op: the keys viewed as (B*L or N, d))
  const void* ids;    // int32 or int64 as EmbedField's (the embedding op)
  int64_t n, stride_b, stride_l;
  int d, off;  // width; first column in the query
  bool ids64;
  int64_t* rows;                     // per slot: (R*k,)
  void* values;                      // per slot: (R*k, d) of the table's dtype; dense: (n, d) float32; written: (n, d)
  unsigned long long* first;         // per slot: the first real entry (atomicMin), initially ~0
};

struct BackwardParams {
  const float* grad;       // (R, k) the scores' gradient
  const int64_t* indices;  // (R, k), -1 padding
  const float* query;      // (R, D) float32
  const int64_t* starts;   // jagged: (B,) clamped row starts, else nullptr
  float* grad_query;       // (R, D) float32
  int64_t R, T, K, D, L;   // L: positions of a padded row (keys op), or N, the jagged stream's length
  float scale;
  int F, cols;  // fields; columns per pass (a power of two <= kThreads)
  TableGrad mode;
  bool keys;  // the keys op: entry j of row b reads key row b * L + j (jagged: start + j), no ids
  BackwardField fields[kMaxFields];
};

// Launches the backward for tables (or keys) of type T (float, __half,
// __nv_bfloat16, __nv_fp8_e4m3: no table gradient) and checks the launch.
template <typename T>
void launch_backward(const BackwardParams& p, cudaStream_t stream);

// Per slot: each field's padding rows (-1) become its first real entry's row (0 if
// none), as dare_kernels._contract.slot_rows. One launch for every field, checked.
void launch_fix_slot_rows(const BackwardParams& p, cudaStream_t stream);

}  // namespace dare
