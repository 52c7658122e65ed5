// The fused embedding top-k kernel for float tables (embedding_kernel.cuh).
#include "embedding_kernel.cuh"

namespace dare {
template void launch_embedding<float>(const EmbedParams&, int, int64_t, size_t, cudaStream_t);
template void launch_gather_keys<float>(const EmbedParams&, int, int64_t, int64_t, void*, cudaStream_t);
}  // namespace dare
