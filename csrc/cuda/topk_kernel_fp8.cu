// The fused top-k kernel for float8_e4m3fn keys (topk_kernel.cuh), with a float32 query.
#include "topk_kernel.cuh"

namespace dare {
template void launch_topk<__nv_fp8_e4m3>(const Params&, int64_t, size_t, bool, cudaStream_t);
}  // namespace dare
