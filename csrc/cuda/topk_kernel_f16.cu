// The fused top-k kernel for __half keys (topk_kernel.cuh) and the many-targets kernel (targets_kernel.cuh).
#include "targets_kernel.cuh"
#include "topk_kernel.cuh"

namespace dare {
template void launch_topk<__half>(const Params&, int64_t, size_t, bool, cudaStream_t);
template void launch_targets<__half>(const Params&, int64_t, size_t, cudaStream_t);
}  // namespace dare
