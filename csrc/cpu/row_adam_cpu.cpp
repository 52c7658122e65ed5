// RowAdam's update of one table on the CPU in one call: lazy Adam (SparseAdam's
// update) on the rows a sparse gradient touches, taken as it comes (rows may
// repeat: the lookups' gradients are one entry per looked-up id). The entries are
// sorted by row once; each touched row's gradient is summed in float32 and its
// parameter and moment rows are read and written once, in parallel over rows (the
// index-op path makes a dozen passes over the touched rows, each an allocation).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

namespace dare {
namespace {

void row_adam_cpu(at::Tensor param, at::Tensor exp_avg, at::Tensor exp_avg_sq, at::Tensor step,
                  const at::Tensor& rows, const at::Tensor& values, double lr, double beta1, double beta2,
                  double eps) {
  constexpr const char* op = "row_adam_";
  TORCH_CHECK_VALUE(param.dim() == 2 && param.is_contiguous(), op, ": param must be a contiguous (n, d) table, got ",
                    param.sizes());
  TORCH_CHECK_VALUE(exp_avg.sizes() == param.sizes() && exp_avg_sq.sizes() == param.sizes() &&
                        exp_avg.is_contiguous() && exp_avg_sq.is_contiguous(),
                    op, ": exp_avg and exp_avg_sq must be contiguous and of param's shape ", param.sizes());
  TORCH_CHECK_TYPE(exp_avg.scalar_type() == param.scalar_type() && exp_avg_sq.scalar_type() == param.scalar_type() &&
                       values.scalar_type() == param.scalar_type(),
                   op, ": exp_avg, exp_avg_sq and values must have param's dtype ", param.scalar_type());
  TORCH_CHECK_VALUE(step.numel() == 1 && step.scalar_type() == at::kFloat, op,
                    ": step must be a float32 scalar tensor, got ", step.scalar_type(), " of shape ", step.sizes());
  TORCH_CHECK_TYPE(rows.scalar_type() == at::kLong && rows.dim() == 1, op, ": rows must be int64 of shape (nnz,), got ",
                   rows.scalar_type(), " of shape ", rows.sizes());
  const int64_t n = param.size(0), d = param.size(1), nnz = rows.size(0);
  TORCH_CHECK_VALUE(values.dim() == 2 && values.size(0) == nnz && values.size(1) == d, op,
                    ": values must have shape (nnz, d) = (", nnz, ", ", d, "), got ", values.sizes());
  const float t = step.data_ptr<float>()[0] + 1.0f;
  step.fill_(t);
  if (nnz == 0 || d == 0) return;
  const at::Tensor r = rows.contiguous();
  const int64_t* row = r.data_ptr<int64_t>();
  for (int64_t i = 0; i < nnz; ++i)
    TORCH_CHECK_VALUE(row[i] >= 0 && row[i] < n, op, ": rows must be in [0, ", n, "), got ", row[i]);
  std::vector<int64_t> order(static_cast<size_t>(nnz));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return row[a] < row[b]; });
  std::vector<int64_t> starts;  // the first sorted entry of each touched row
  for (int64_t s = 0; s < nnz; ++s)
    if (s == 0 || row[order[s]] != row[order[s - 1]]) starts.push_back(s);
  starts.push_back(nnz);
  const double step_size = lr * std::sqrt(1.0 - std::pow(beta2, t)) / (1.0 - std::pow(beta1, t));
  const at::Tensor v = values.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param.scalar_type(), "row_adam_cpu", [&] {
    using acc = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    scalar_t* p = param.data_ptr<scalar_t>();
    scalar_t* m = exp_avg.data_ptr<scalar_t>();
    scalar_t* s2 = exp_avg_sq.data_ptr<scalar_t>();
    const scalar_t* g = v.data_ptr<scalar_t>();
    // 1 - beta in double first: float(0.999) is 1.3e-5 off in 1 - beta2 (SparseAdam's are double).
    const acc c1 = acc(1.0 - beta1), c2 = acc(1.0 - beta2), e = acc(eps), ss = acc(step_size);
    at::parallel_for(0, int64_t(starts.size()) - 1, 64, [&](int64_t u0, int64_t u1) {
      std::vector<acc> sum(static_cast<size_t>(d));
      for (int64_t u = u0; u < u1; ++u) {
        std::fill(sum.begin(), sum.end(), acc(0));
        for (int64_t s = starts[u]; s < starts[u + 1]; ++s) {
          const scalar_t* gi = g + order[s] * d;
          for (int64_t c = 0; c < d; ++c) sum[c] += acc(gi[c]);
        }
        const int64_t base = row[order[starts[u]]] * d;
        for (int64_t c = 0; c < d; ++c) {
          const acc gc = acc(scalar_t(sum[c]));  // the coalesced gradient, in the table's dtype
          // SparseAdam's forms: moment + (1 - beta) * (target - moment).
          const acc mc = acc(m[base + c]) + c1 * (gc - acc(m[base + c]));
          const acc vc = acc(s2[base + c]) + c2 * (gc * gc - acc(s2[base + c]));
          m[base + c] = scalar_t(mc);
          s2[base + c] = scalar_t(vc);
          p[base + c] = scalar_t(acc(p[base + c]) - ss * (acc(scalar_t(mc)) / (std::sqrt(acc(scalar_t(vc))) + e)));
        }
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(dare, CPU, m) { m.impl("row_adam_", &row_adam_cpu); }

}  // namespace dare
