// The one schema of the op. Backends register implementations against it:
// csrc/cpu (CPU), csrc/cuda (CUDA); fake and autograd come from
// dare_kernels/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(dare, m) {
  m.def(
      "topk_attention(Tensor query, Tensor keys, int k, Tensor? lengths=None, "
      "float scale=1.0) -> (Tensor scores, Tensor indices)");
}
