// The fused embedding top-k kernel for __half tables (embedding_kernel.cuh).
#include "embedding_kernel.cuh"

namespace dare {
template void launch_embedding<__half>(const EmbedParams&, int, int64_t, size_t, cudaStream_t);
template void launch_gather_keys<__half>(const EmbedParams&, int, int64_t, int64_t, void*, cudaStream_t);
}  // namespace dare
