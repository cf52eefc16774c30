// Exercise 02, solution: the Switch auxiliary loss with its gradient, and DeepSeek-V3's bias.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "../load_balancing.hpp"

namespace ex02 {

double aux_loss(const std::vector<double>& logits, int T, int E, int K, double alpha,
                std::vector<double>& grad) {
  std::vector<double> p(logits.size()), f(E, 0.0), P(E, 0.0);
  std::vector<int> idx(E);
  for (int t = 0; t < T; ++t) {
    const double* l = logits.data() + static_cast<std::size_t>(t) * E;
    double* pt = p.data() + static_cast<std::size_t>(t) * E;
    const double mx = *std::max_element(l, l + E);
    double s = 0;
    for (int e = 0; e < E; ++e) s += pt[e] = std::exp(l[e] - mx);
    for (int e = 0; e < E; ++e) {
      pt[e] /= s;
      P[e] += pt[e] / T;
    }
    // f: which experts the token's top-k picked (f is a count: no gradient flows through it).
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + K, idx.end(),
                      [l](int a, int b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
    for (int k = 0; k < K; ++k) f[idx[k]] += 1.0 / (static_cast<double>(T) * K);
  }
  double loss = 0;
  for (int e = 0; e < E; ++e) loss += f[e] * P[e];
  loss *= alpha * E;
  // dL/dP_i = alpha E f_i;  dP_i/dl_tj = p_ti (delta_ij - p_tj) / T
  //   => dL/dl_tj = alpha E / T * p_tj * (f_j - sum_i f_i p_ti)
  for (int t = 0; t < T; ++t) {
    const double* pt = p.data() + static_cast<std::size_t>(t) * E;
    double fp = 0;
    for (int e = 0; e < E; ++e) fp += f[e] * pt[e];
    for (int e = 0; e < E; ++e)
      grad[static_cast<std::size_t>(t) * E + e] += alpha * E / T * pt[e] * (f[e] - fp);
  }
  return loss;
}

void update_bias(std::vector<double>& bias, const std::vector<std::int64_t>& loads, double gamma) {
  std::int64_t total = 0;
  for (auto l : loads) total += l;
  const auto E = static_cast<std::int64_t>(loads.size());
  for (std::size_t e = 0; e < loads.size(); ++e) {
    // load < mean  <=>  load * E < total (exact in integers)
    if (loads[e] * E < total) bias[e] += gamma;
    else if (loads[e] * E > total) bias[e] -= gamma;
  }
}

}  // namespace ex02
