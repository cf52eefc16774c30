// Exercise 01, a solution.
#include "moe_forward.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace exercise01 {

std::vector<float> softmax(const std::vector<float>& v) {
  const float m = *std::max_element(v.begin(), v.end());
  std::vector<float> p(v.size());
  float sum = 0;
  for (std::size_t i = 0; i < v.size(); ++i) sum += p[i] = std::exp(v[i] - m);
  for (float& x : p) x /= sum;
  return p;
}

std::vector<int> top_k(const std::vector<float>& scores, int k) {
  std::vector<int> idx(scores.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return scores[a] > scores[b]; });
  idx.resize(static_cast<std::size_t>(k));
  return idx;
}

std::vector<float> expert_ffn(const SimpleMoe& m, int e, const float* x) {
  const std::size_t nd = static_cast<std::size_t>(m.n) * m.d;
  const float* wg = m.w_gate.data() + e * nd;
  const float* wu = m.w_up.data() + e * nd;
  const float* wd = m.w_down.data() + e * nd;
  std::vector<float> a(static_cast<std::size_t>(m.n)), out(static_cast<std::size_t>(m.d), 0.0f);
  for (int j = 0; j < m.n; ++j) {
    float g = 0, u = 0;
    for (int i = 0; i < m.d; ++i) {
      g += wg[j * m.d + i] * x[i];
      u += wu[j * m.d + i] * x[i];
    }
    a[j] = g / (1.0f + std::exp(-g)) * u;
  }
  for (int i = 0; i < m.d; ++i)
    for (int j = 0; j < m.n; ++j) out[i] += wd[i * m.n + j] * a[j];
  return out;
}

std::vector<float> moe_forward(const SimpleMoe& m, const std::vector<float>& x, int T) {
  std::vector<float> out(static_cast<std::size_t>(T) * m.d, 0.0f), logits(m.num_experts);
  for (int t = 0; t < T; ++t) {
    const float* xt = x.data() + static_cast<std::size_t>(t) * m.d;
    for (int e = 0; e < m.num_experts; ++e) {
      float s = 0;
      for (int i = 0; i < m.d; ++i) s += m.router[e * m.d + i] * xt[i];
      logits[e] = s;
    }
    const std::vector<float> p = softmax(logits);
    const std::vector<int> chosen = top_k(p, m.top_k);
    float sum = 0;
    for (int e : chosen) sum += p[e];
    for (int e : chosen) {
      const std::vector<float> y = expert_ffn(m, e, xt);
      for (int i = 0; i < m.d; ++i) out[static_cast<std::size_t>(t) * m.d + i] += p[e] / sum * y[i];
    }
  }
  return out;
}

}  // namespace exercise01
