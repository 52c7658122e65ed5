// The fused top-k kernel for float keys (topk_kernel.cuh) and the many-targets kernel (targets_kernel.cuh, 3xTF32).
#include "targets_kernel.cuh"
#include "topk_kernel.cuh"

namespace dare {
template void launch_topk<float>(const Params&, int64_t, size_t, bool, cudaStream_t);
template void launch_targets<float>(const Params&, int64_t, size_t, cudaStream_t);
}  // namespace dare
