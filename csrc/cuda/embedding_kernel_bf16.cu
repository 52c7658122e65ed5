// The fused embedding top-k kernel for __nv_bfloat16 tables (embedding_kernel.cuh).
#include "embedding_kernel.cuh"

namespace dare {
template void launch_embedding<__nv_bfloat16>(const EmbedParams&, int, int64_t, size_t, cudaStream_t);
template void launch_gather_keys<__nv_bfloat16>(const EmbedParams&, int, int64_t, int64_t, void*, cudaStream_t);
}  // namespace dare
