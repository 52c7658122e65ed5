// The fused top-k kernel for float keys (topk_kernel.cuh).
#include "topk_kernel.cuh"

namespace dare {
template void launch_topk<float>(const Params&, int64_t, size_t, bool, cudaStream_t);
}  // namespace dare
