// The fused top-k kernel for __nv_bfloat16 keys (topk_kernel.cuh).
#include "topk_kernel.cuh"

namespace dare {
template void launch_topk<__nv_bfloat16>(const Params&, int64_t, size_t, bool, cudaStream_t);
}  // namespace dare
