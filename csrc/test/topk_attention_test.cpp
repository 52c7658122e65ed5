// C++ check of the op through the dispatcher, with no Python: exactness against
// a naive reference (ties, lengths, T > 1, NaN), the input checks, and one
// timing line for the CPU kernel.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

namespace {

using Out = std::tuple<at::Tensor, at::Tensor>;
using Opt = std::optional<at::Tensor>;
using Sig = Out(const at::Tensor&, const at::Tensor&, int64_t, const Opt&, double, const Opt&, const Opt&);

int failures = 0;

#define EXPECT(cond, ...)                           \
  do {                                              \
    if (!(cond)) {                                  \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                     \
      std::printf("\n");                            \
      ++failures;                                   \
    }                                               \
  } while (0)

c10::TypedOperatorHandle<Sig> op() {
  return c10::Dispatcher::singleton().findSchemaOrThrow("dare::topk_attention", "").typed<Sig>();
}

// Naive reference: all scores in double, stable sort by (NaN first, score desc, index asc).
void reference(const at::Tensor& q, const at::Tensor& K, int64_t k, const std::vector<int64_t>& len,
               double scale, std::vector<double>& scores, std::vector<int64_t>& idx) {
  const int64_t B = K.size(0), L = K.size(1), d = K.size(2), T = q.size(1);
  auto qa = q.to(at::kDouble).contiguous(), Ka = K.to(at::kDouble).contiguous();
  const double* qp = qa.data_ptr<double>();
  const double* kp = Ka.data_ptr<double>();
  scores.assign(B * T * k, -INFINITY);
  idx.assign(B * T * k, -1);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      std::vector<std::pair<double, int64_t>> s;
      for (int64_t j = 0; j < len[b]; ++j) {
        double acc = 0;
        for (int64_t c = 0; c < d; ++c) acc += qp[(b * T + t) * d + c] * kp[(b * L + j) * d + c];
        s.push_back({acc * scale, j});
      }
      std::stable_sort(s.begin(), s.end(), [](auto& x, auto& y) {
        if (std::isnan(x.first) != std::isnan(y.first)) return std::isnan(x.first);
        return x.first > y.first;
      });
      for (int64_t i = 0; i < std::min<int64_t>(k, s.size()); ++i) {
        scores[(b * T + t) * k + i] = s[i].first;
        idx[(b * T + t) * k + i] = s[i].second;
      }
    }
}

void check_exact(at::ScalarType dtype, int64_t B, int64_t T, int64_t L, int64_t d, int64_t k, bool nan) {
  // Small integers: float32 arithmetic is exact, so indices must match exactly, ties included.
  at::Tensor K = at::randint(-2, 3, {B, L, d}).to(dtype);
  at::Tensor q = at::randint(-2, 3, {B, T, d}).to(dtype);
  if (nan) K.index_put_({0, L / 2, 0}, NAN);
  std::vector<int64_t> len(B);
  for (int64_t b = 0; b < B; ++b) len[b] = (b % 3 == 1) ? (L * b) / (B + 1) : L;
  at::Tensor lengths = at::tensor(len, at::kLong);
  auto [s, i] = op().call(q, K, k, lengths, 0.5, std::nullopt, std::nullopt);
  std::vector<double> rs;
  std::vector<int64_t> ri;
  reference(q, K, k, len, 0.5, rs, ri);
  auto sc = s.contiguous(), ic = i.contiguous();
  const float* sp = sc.data_ptr<float>();
  const int64_t* ip = ic.data_ptr<int64_t>();
  int64_t bad = 0;
  for (size_t n = 0; n < ri.size(); ++n) {
    const bool same = ip[n] == ri[n] && ((std::isnan(sp[n]) && std::isnan(rs[n])) || sp[n] == rs[n]);
    bad += !same;
  }
  EXPECT(bad == 0, "dtype %s B=%ld T=%ld L=%ld d=%ld k=%ld: %ld of %zu slots differ", c10::toString(dtype),
         (long)B, (long)T, (long)L, (long)d, (long)k, (long)bad, ri.size());
}

// The same rows as lengths, a left-padding mask and jagged values: one result, bit for bit.
void check_layouts(int64_t B, int64_t L, int64_t d, int64_t k) {
  const at::Tensor K = at::randn({B, L, d}), q = at::randn({B, d});
  const at::Tensor len = at::randint(0, L + 1, {B}, at::kLong);
  auto [s0, i0] = op().call(q, K, k, len, 1.0, std::nullopt, std::nullopt);
  // Left padding: row b's keys moved to its end, NaN in front (never selected).
  at::Tensor left = at::full({B, L, d}, NAN);
  const at::Tensor pos = at::arange(L, at::kLong);
  const at::Tensor mask = pos.view({1, L}) >= (L - len).view({B, 1});
  std::vector<at::Tensor> rows;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = len[b].item<int64_t>();
    left[b].narrow(0, L - n, n).copy_(K[b].narrow(0, 0, n));
    rows.push_back(K[b].narrow(0, 0, n));
  }
  auto [s1, i1] = op().call(q, left, k, std::nullopt, 1.0, mask, std::nullopt);
  const at::Tensor shift = (L - len).view({B, 1});
  const at::Tensor i1_ = at::where(i1 >= 0, i1 - shift, i1);
  const at::Tensor offsets = at::cat({at::zeros({1}, at::kLong), at::cumsum(len, 0)});
  auto [s2, i2] = op().call(q, at::cat(rows), k, std::nullopt, 1.0, std::nullopt, offsets);
  EXPECT(at::equal(s0, s1) && at::equal(i0, i1_), "left mask differs from lengths (B=%ld L=%ld)", (long)B, (long)L);
  EXPECT(at::equal(s0, s2) && at::equal(i0, i2), "jagged rows differ from lengths (B=%ld L=%ld)", (long)B, (long)L);
}

void check_throws(const char* what, const std::function<void()>& f) {
  bool threw = false;
  try {
    f();
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("topk_attention:") != std::string::npos;
  }
  EXPECT(threw, "no topk_attention error for %s", what);
}

}  // namespace

int main() {
  at::manual_seed(0);
  for (auto dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
    check_exact(dtype, 5, 1, 777, 9, 40, false);
    check_exact(dtype, 3, 4, 300, 16, 300, true);
    check_exact(dtype, 4, 2, 2000, 33, 128, true);
  }
  check_layouts(7, 1000, 16, 50);
  check_layouts(3, 300, 13, 300);
  const at::Tensor q = at::randn({2, 8}), K = at::randn({2, 50, 8});
  check_throws("k = 0", [&] { op().call(q, K, 0, std::nullopt, 1.0, std::nullopt, std::nullopt); });
  check_throws("k > L", [&] { op().call(q, K, 51, std::nullopt, 1.0, std::nullopt, std::nullopt); });
  check_throws("d mismatch", [&] { op().call(at::randn({2, 7}), K, 3, std::nullopt, 1.0, std::nullopt, std::nullopt); });
  check_throws("lengths > L", [&] { op().call(q, K, 3, at::tensor({1, 51}), 1.0, std::nullopt, std::nullopt); });
  check_throws("mask and offsets", [&] {
    op().call(q, K.reshape({100, 8}), 3, std::nullopt, 1.0, at::ones({2, 100}, at::kBool), at::tensor({0, 50, 100}));
  });
  check_throws("float64", [&] { op().call(q.to(at::kDouble), K.to(at::kDouble), 3, std::nullopt, 1.0, std::nullopt, std::nullopt); });

  // One timing line (not a pass/fail criterion): bench/ holds the benchmarks.
  const at::Tensor qb = at::randn({64, 16}), Kb = at::randn({64, 10000, 16});
  op().call(qb, Kb, 128, std::nullopt, 1.0, std::nullopt, std::nullopt);
  std::vector<double> ms;
  for (int r = 0; r < 20; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    op().call(qb, Kb, 128, std::nullopt, 1.0, std::nullopt, std::nullopt);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  std::printf("cpu B=64 L=10000 d=16 k=128 float32: median %.3f ms\n", ms[ms.size() / 2]);

  if (failures) {
    std::printf("%d failure(s)\n", failures);
    return 1;
  }
  std::printf("all checks passed\n");
  return 0;
}
