// The ops' autograd in C++ (the Autograd key), for every device the library serves:
// torch.library.register_autograd's Python wrapper cost ~0.3 ms of host time per
// forward + backward (pytree of the Tensor[] arguments, the Python backward), more than
// the backward's GPU work at d = 16. The formula is the one in dare_kernels/_contract.py
// (which still registers it for the Triton ops): the backward is one call of the
// backward op, whichever backend implements it for the device.
#include <torch/autograd.h>
#include <torch/library.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/functions/basic_ops.h>

namespace dare {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Undefined for an absent optional: save_for_backward keeps the slot.
Tensor or_undefined(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }
OptTensor or_none(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// The ops below autograd, through the dispatcher (CPU, CUDA, Triton, fake, ...).
const auto& keys_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dare::topk_attention", "")
                       .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, int64_t, const OptTensor&,
                                                         double, const OptTensor&, const OptTensor&)>();
  return op;
}
const auto& keys_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dare::topk_attention_backward", "")
                       .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                         double, const OptTensor&, bool)>();
  return op;
}
const auto& ids_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dare::topk_attention_embedding", "")
                       .typed<std::tuple<Tensor, Tensor>(const Tensor&, at::TensorList, at::TensorList, int64_t,
                                                         const OptTensor&, double, const OptTensor&,
                                                         const OptTensor&, bool)>();
  return op;
}
const auto& ids_backward_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dare::topk_attention_embedding_backward", "")
          .typed<std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>>(
              const Tensor&, const Tensor&, at::TensorList, at::TensorList, const Tensor&, double, const OptTensor&,
              bool, bool)>();
  return op;
}

// The backward ops have no derivative of their own. Under create_graph (grad mode on in
// backward) with anything differentiable around, the gradients come back wired to an
// error node, as torch.autograd.function.once_differentiable does: a second
// derivative through the op raises instead of coming back silently missing.
variable_list once_differentiable(variable_list grads, bool differentiable, const char* op) {
  if (!differentiable || !at::GradMode::is_enabled()) return grads;
  for (auto& g : grads)
    if (g.defined()) {
      g = g.detach();
      g.set_requires_grad(true);
    }
  auto error = std::make_shared<torch::autograd::DelayedError>(
      std::string("dare::") + op + " has no second derivative: its backward is not differentiable",
      static_cast<int64_t>(grads.size()));
  return (*error)(std::move(grads));
}

bool any_requires_grad(const variable_list& ts) {
  for (const auto& t : ts)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

struct KeysFunction : public torch::autograd::Function<KeysFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& query, const Tensor& keys, int64_t k,
                               const OptTensor& lengths, double scale, const OptTensor& mask,
                               const OptTensor& offsets) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [scores, indices] = keys_op().call(query, keys, k, lengths, scale, mask, offsets);
    ctx->mark_non_differentiable({indices});
    ctx->save_for_backward({query, keys, indices, or_undefined(offsets)});
    ctx->saved_data["scale"] = scale;
    return {scores, indices};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &query = saved[0], &keys = saved[1];
    // Quantised keys take no gradient.
    const bool need_keys = ctx->needs_input_grad(1) && keys.scalar_type() != at::kFloat8_e4m3fn;
    const bool differentiable = any_requires_grad(grads) || any_requires_grad(saved);
    Tensor grad_query, grad_keys;
    {
      at::AutoGradMode no_grad(false);
      std::tie(grad_query, grad_keys) = keys_backward_op().call(
          grads[0], query, keys, saved[2], ctx->saved_data["scale"].toDouble(), or_none(saved[3]), need_keys);
    }
    // One entry per forward argument: query, keys, k, lengths, scale, mask, offsets.
    auto out = once_differentiable({ctx->needs_input_grad(0) ? grad_query : Tensor(), need_keys ? grad_keys : Tensor()},
                                   differentiable, "topk_attention");
    out.resize(7);
    return out;
  }
};

struct IdsFunction : public torch::autograd::Function<IdsFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& query, at::TensorList tables, at::TensorList ids,
                               int64_t k, const OptTensor& lengths, double scale, const OptTensor& mask,
                               const OptTensor& offsets, bool sparse) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [scores, indices] = ids_op().call(query, tables, ids, k, lengths, scale, mask, offsets, sparse);
    ctx->mark_non_differentiable({indices});
    variable_list save{query, indices, or_undefined(offsets)};
    save.insert(save.end(), tables.begin(), tables.end());
    save.insert(save.end(), ids.begin(), ids.end());
    ctx->save_for_backward(save);
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["sparse"] = sparse;
    ctx->saved_data["fields"] = static_cast<int64_t>(tables.size());
    return {scores, indices};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t F = ctx->saved_data["fields"].toInt();
    const bool sparse = ctx->saved_data["sparse"].toBool();
    const Tensor& query = saved[0];
    std::vector<Tensor> tables(saved.begin() + 3, saved.begin() + 3 + F);
    std::vector<Tensor> ids(saved.begin() + 3 + F, saved.begin() + 3 + 2 * F);
    // Variable inputs in order: query, the F tables, the F ids, then lengths / mask / offsets.
    bool need_tables = false;
    for (int64_t f = 0; f < F; ++f) need_tables = need_tables || ctx->needs_input_grad(1 + f);
    const bool differentiable = any_requires_grad(grads) || any_requires_grad(saved);
    Tensor grad_query;
    std::vector<Tensor> rows, values;
    {
      at::AutoGradMode no_grad(false);
      std::tie(grad_query, rows, values) =
          ids_backward_op().call(grads[0], query, tables, ids, saved[1], ctx->saved_data["scale"].toDouble(),
                                 or_none(saved[2]), sparse, need_tables);
    }
    variable_list out{ctx->needs_input_grad(0) ? grad_query : Tensor()};
    // Sparse: the touched rows as a COO tensor, coalesced (rows ascending) except on a
    // GPU, where the op keeps one entry per slot (no host synchronisation: capturable).
    const bool coalesced = query.device().type() != at::kCUDA;
    for (int64_t f = 0; f < F; ++f) {
      if (!need_tables || !ctx->needs_input_grad(1 + f)) {
        out.emplace_back();
      } else if (sparse) {
        // No invariant check, whatever torch.sparse.check_sparse_tensor_invariants says: it
        // would read the rows on the host (a synchronisation; no graph capture).
        out.push_back(at::_sparse_coo_tensor_with_dims_and_tensors(
            1, 1, tables[f].sizes(), rows[f].unsqueeze(0), values[f], values[f].options().layout(at::kSparse),
            coalesced));
      } else {
        out.push_back(values[f]);
      }
    }
    out = once_differentiable(std::move(out), differentiable, "topk_attention_embedding");
    // ids, k, lengths, scale, mask, offsets, sparse
    out.resize(out.size() + F + 6);
    return out;
  }
};

std::tuple<Tensor, Tensor> topk_attention_autograd(const Tensor& query, const Tensor& keys, int64_t k,
                                                   const OptTensor& lengths, double scale, const OptTensor& mask,
                                                   const OptTensor& offsets) {
  auto out = KeysFunction::apply(query, keys, k, lengths, scale, mask, offsets);
  return {out[0], out[1]};
}

std::tuple<Tensor, Tensor> topk_attention_embedding_autograd(const Tensor& query, at::TensorList tables,
                                                             at::TensorList ids, int64_t k,
                                                             const OptTensor& lengths, double scale,
                                                             const OptTensor& mask, const OptTensor& offsets,
                                                             bool sparse) {
  auto out = IdsFunction::apply(query, tables, ids, k, lengths, scale, mask, offsets, sparse);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(dare, Autograd, m) {
  m.impl("topk_attention", &topk_attention_autograd);
  m.impl("topk_attention_embedding", &topk_attention_embedding_autograd);
}

}  // namespace dare
