// The one schema of each op. Which positions take part: lengths (right padding)
// and/or mask (B, L) bool, or jagged rows (offsets (B+1,); keys (N, d), ids (N,)). Backends register implementations against it:
// csrc/cpu (CPU), csrc/cuda (CUDA), autograd csrc/autograd.cpp; fake (and the Triton ops' autograd) from
// dare_kernels/_contract.py, the Triton backend from dare_kernels/triton_backend.
#include <torch/library.h>

TORCH_LIBRARY(dare, m) {
  m.def(
      "topk_attention(Tensor query, Tensor keys, int k, Tensor? lengths=None, "
      "float scale=1.0, Tensor? mask=None, Tensor? offsets=None) -> (Tensor scores, Tensor indices)");
  // Its backward in one call, from the selected keys alone: grad (the scores' gradient)
  // and indices as the forward returned them; grad_keys dense (keys' shape and dtype,
  // float32 sums rounded once), empty without need_keys or for float8 keys.
  m.def(
      "topk_attention_backward(Tensor grad, Tensor query, Tensor keys, Tensor indices, float scale=1.0, "
      "Tensor? offsets=None, bool need_keys=True) -> (Tensor grad_query, Tensor grad_keys)");
  // keys[b, j] = [tables[0][ids[0][b, j]] | ... | tables[F-1][ids[F-1][b, j]]], never built.
  // sparse: the tables' gradients as coalesced sparse COO tensors of the touched rows
  // (as aten::embedding's `sparse`); the forward ignores it.
  m.def(
      "topk_attention_embedding(Tensor query, Tensor[] tables, Tensor[] ids, int k, "
      "Tensor? lengths=None, float scale=1.0, Tensor? mask=None, Tensor? offsets=None, "
      "bool sparse=False) -> (Tensor scores, Tensor indices)");
  // Its backward in one call, from the selected behaviours alone: grad (the scores'
  // gradient) and indices as the forward returned them. Per table: with sparse the
  // touched rows (ascending) and their gradients (values), else no rows and the dense
  // gradient; sums in float32, rounded once to the table's dtype.
  m.def(
      "topk_attention_embedding_backward(Tensor grad, Tensor query, Tensor[] tables, Tensor[] ids, "
      "Tensor indices, float scale=1.0, Tensor? offsets=None, bool sparse=False, bool need_tables=True) "
      "-> (Tensor grad_query, Tensor[] rows, Tensor[] values)");
  // Lazy Adam (torch.optim.SparseAdam's update) of a table's touched rows, in place:
  // row rows[i] receives values[i] (rows may repeat: they are summed in float32);
  // step, a float32 scalar, counts this step first. dare_kernels.optim.RowAdam calls it.
  m.def(
      "row_adam_(Tensor(a!) param, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor(d!) step, Tensor rows, "
      "Tensor values, float lr, float beta1, float beta2, float eps) -> ()");
}
