// The one schema of each op. Which positions take part: lengths (right padding)
// and/or mask (B, L) bool, or jagged rows (offsets (B+1,); keys (N, d), ids (N,)). Backends register implementations against it:
// csrc/cpu (CPU), csrc/cuda (CUDA); fake and autograd come from
// dare_kernels/_contract.py, the Triton backend from dare_kernels/triton_backend.
#include <torch/library.h>

TORCH_LIBRARY(dare, m) {
  m.def(
      "topk_attention(Tensor query, Tensor keys, int k, Tensor? lengths=None, "
      "float scale=1.0, Tensor? mask=None, Tensor? offsets=None) -> (Tensor scores, Tensor indices)");
  // keys[b, j] = [tables[0][ids[0][b, j]] | ... | tables[F-1][ids[F-1][b, j]]], never built.
  // sparse: the tables' gradients as coalesced sparse COO tensors of the touched rows
  // (as aten::embedding's `sparse`); the forward ignores it.
  m.def(
      "topk_attention_embedding(Tensor query, Tensor[] tables, Tensor[] ids, int k, "
      "Tensor? lengths=None, float scale=1.0, Tensor? mask=None, Tensor? offsets=None, "
      "bool sparse=False) -> (Tensor scores, Tensor indices)");
}
