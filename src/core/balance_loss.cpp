// Load-balancing losses on the router logits, with their gradients: Switch / GShard's auxiliary
// loss and ST-MoE's router z-loss. Double precision throughout.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "tilemoe/balance.hpp"

namespace tilemoe {
namespace {

void check_logits(const std::vector<double>& logits, std::int64_t T, int E) {
  check_arg(T >= 1, "num_tokens", T, ">= 1");
  check_arg(E >= 1, "num_experts", E, ">= 1");
  check_arg(static_cast<std::int64_t>(logits.size()) == T * E, "logits.size()", logits.size(),
            detail::concat("num_tokens * num_experts = ", T * E));
  for (std::size_t i = 0; i < logits.size(); ++i)
    if (!std::isfinite(logits[i]))
      throw InvalidArgument(detail::concat("logits[", i / E, ", ", i % E, "] = ", logits[i],
                                           ": expected finite router logits"));
}

// softmax of one row; returns logsumexp.
double softmax_row(const double* l, int E, double* p) {
  const double m = *std::max_element(l, l + E);
  double s = 0;
  for (int e = 0; e < E; ++e) s += p[e] = std::exp(l[e] - m);
  for (int e = 0; e < E; ++e) p[e] /= s;
  return m + std::log(s);
}

}  // namespace

LossAndGrad switch_aux_loss(const std::vector<double>& logits, std::int64_t T, int E, int K,
                            double alpha) {
  check_logits(logits, T, E);
  check_arg(K >= 1 && K <= E, "top_k", K, detail::concat("1 <= top_k <= num_experts (", E, ")"));
  check_arg(std::isfinite(alpha), "alpha", alpha, "a finite coefficient");
  std::vector<double> p(logits.size()), f(E, 0.0), P(E, 0.0);
  std::vector<int> idx(E);
  for (std::int64_t t = 0; t < T; ++t) {
    const double* l = logits.data() + t * E;
    softmax_row(l, E, p.data() + t * E);
    for (int e = 0; e < E; ++e) P[e] += p[t * E + e] / static_cast<double>(T);
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + K, idx.end(),
                      [l](int a, int b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
    for (int k = 0; k < K; ++k) f[idx[k]] += 1.0;
  }
  for (int e = 0; e < E; ++e) f[e] /= static_cast<double>(T * K);
  LossAndGrad r;
  for (int e = 0; e < E; ++e) r.value += f[e] * P[e];
  r.value *= alpha * E;
  r.grad.resize(logits.size());
  const double c = alpha * E / static_cast<double>(T);
  for (std::int64_t t = 0; t < T; ++t) {
    const double* pt = p.data() + t * E;
    double fp = 0;
    for (int e = 0; e < E; ++e) fp += f[e] * pt[e];
    for (int e = 0; e < E; ++e) r.grad[t * E + e] = c * pt[e] * (f[e] - fp);
  }
  return r;
}

LossAndGrad router_z_loss(const std::vector<double>& logits, std::int64_t T, int E, double beta) {
  check_logits(logits, T, E);
  check_arg(std::isfinite(beta), "beta", beta, "a finite coefficient");
  LossAndGrad r;
  r.grad.resize(logits.size());
  for (std::int64_t t = 0; t < T; ++t) {
    double* g = r.grad.data() + t * E;
    const double lse = softmax_row(logits.data() + t * E, E, g);  // g holds softmax for now
    r.value += lse * lse;
    for (int e = 0; e < E; ++e) g[e] *= beta * 2.0 * lse / static_cast<double>(T);
  }
  r.value *= beta / static_cast<double>(T);
  return r;
}

}  // namespace tilemoe
