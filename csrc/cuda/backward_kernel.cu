// Both ops' backward on the GPU (kernels.h: BackwardParams). A CTA takes one target
// row's k selected entries: thread (e, c) of E = kThreads / cols entry lanes and
// `cols` columns handles column c of entries e, e + E, ... . Per entry it finds the
// row the entry read (the field's id, or the key's position), adds g * row[c] to
// its float32 partial of the query's gradient and, for the table, g * q[c] in the
// form asked for. The E partials of a column are summed in lane order: the query's
// gradient does not depend on scheduling. No B x L tensor, no sort, one launch.
#include <cstdint>

#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "kernels.h"
#include "vec.cuh"

namespace dare {
namespace {

template <typename T>
__device__ __forceinline__ T from_float(float x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else if constexpr (std::is_same_v<T, __half>) return __float2half_rn(x);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(x);
  else return T(x);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) backward_kernel(BackwardParams p) {
  __shared__ float part[kThreads];
  __shared__ unsigned long long first[kMaxFields];
  const int64_t r = blockIdx.x;
  const int64_t b = r / p.T;
  const int cols = p.cols, E = kThreads / cols;
  const int e = threadIdx.x / cols, c = threadIdx.x % cols;
  if (threadIdx.x < kMaxFields) first[threadIdx.x] = ~0ull;
  __syncthreads();
  const int64_t* idx = p.indices + r * p.K;
  const float* g = p.grad + r * p.K;
  for (int c0 = 0; c0 < p.D; c0 += cols) {
    const int col = c0 + c;
    float acc = 0.f;
    if (col < p.D) {
      // This column's field (an unrolled pick: no dynamic indexing of the parameters).
      BackwardField fd = p.fields[0];
      int f = 0;
#pragma unroll
      for (int i = 1; i < kMaxFields; ++i)
        if (i < p.F && col >= p.fields[i].off) {
          fd = p.fields[i];
          f = i;
        }
      const int cf = col - fd.off;
      const float q = p.query[r * p.D + col];
      const T* table = static_cast<const T*>(fd.table);
      int64_t first_ok = -1;
      for (int64_t kk = e; kk < p.K; kk += E) {
        const int64_t j = idx[kk];
        int64_t row = -1;
        if (j >= 0 && (p.starts != nullptr ? p.L > 0 : j < p.L)) {
          const int64_t pos = p.starts ? min(p.starts[b] + j, max(p.L - 1, int64_t(0))) : j;
          if (p.keys) {
            row = p.starts ? pos : b * p.L + pos;
            row = row < fd.n ? row : -1;
          } else {
            const int64_t at = (p.starts ? 0 : b) * fd.stride_b + pos * fd.stride_l;
            const int64_t id = fd.ids64 ? int64_t(__ldg(static_cast<const long long*>(fd.ids) + at))
                                        : int64_t(__ldg(static_cast<const int*>(fd.ids) + at));
            row = id >= 0 && id < fd.n ? id : -1;
          }
        }
        const float w = row >= 0 ? g[kk] * p.scale : 0.f;
        if (row >= 0) acc = fmaf(w, to_float(table[row * fd.d + cf]), acc);
        if constexpr (!std::is_same_v<T, __nv_fp8_e4m3>) {
          if (p.mode == TableGrad::kDense) {
            if (row >= 0) atomicAdd(static_cast<float*>(fd.values) + row * fd.d + cf, w * q);
          } else if (p.mode == TableGrad::kWrite) {
            if (row >= 0) static_cast<T*>(fd.values)[row * fd.d + cf] = from_float<T>(w * q);
          } else if (p.mode == TableGrad::kPerSlot) {
            const int64_t entry = r * p.K + kk;
            static_cast<T*>(fd.values)[entry * fd.d + cf] = from_float<T>(row >= 0 ? w * q : 0.f);
            if (cf == 0) {
              fd.rows[entry] = row;
              if (row >= 0 && first_ok < 0) first_ok = entry;
            }
          }
        }
      }
      if (first_ok >= 0) atomicMin(&first[f], static_cast<unsigned long long>(first_ok));
    }
    part[threadIdx.x] = acc;
    __syncthreads();
    if (e == 0 && col < p.D) {
      float sum = 0.f;
      for (int i = 0; i < E; ++i) sum += part[i * cols + c];
      p.grad_query[r * p.D + col] = sum;
    }
    __syncthreads();
  }
  if (p.mode == TableGrad::kPerSlot && threadIdx.x < p.F && first[threadIdx.x] != ~0ull) {
#pragma unroll
    for (int i = 0; i < kMaxFields; ++i)
      if (i == int(threadIdx.x)) atomicMin(p.fields[i].first, first[i]);
  }
}

__global__ void fix_slot_rows_kernel(BackwardParams p) {
  const int64_t entry = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (entry >= p.R * p.K) return;
#pragma unroll
  for (int f = 0; f < kMaxFields; ++f) {
    if (f < p.F && p.fields[f].rows[entry] < 0) {
      const unsigned long long first = *p.fields[f].first;
      p.fields[f].rows[entry] = first == ~0ull ? 0 : p.fields[f].rows[first];
    }
  }
}

}  // namespace

template <typename T>
void launch_backward(const BackwardParams& p, cudaStream_t stream) {
  if (p.R == 0) return;
  backward_kernel<T><<<dim3(unsigned(p.R)), kThreads, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_fix_slot_rows(const BackwardParams& p, cudaStream_t stream) {
  const int64_t entries = p.R * p.K;
  if (entries == 0) return;
  fix_slot_rows_kernel<<<dim3(unsigned((entries + kThreads - 1) / kThreads)), kThreads, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void launch_backward<float>(const BackwardParams&, cudaStream_t);
template void launch_backward<__half>(const BackwardParams&, cudaStream_t);
template void launch_backward<__nv_bfloat16>(const BackwardParams&, cudaStream_t);
template void launch_backward<__nv_fp8_e4m3>(const BackwardParams&, cudaStream_t);

}  // namespace dare
