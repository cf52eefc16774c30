// The training run of exercise 02 (given; you need not change it). A tiny MoE classifier learns
// the cluster of synthetic clustered tokens by SGD. Without balancing, the experts that win
// early get more tokens, learn faster and win more: the load collapses onto a few experts.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "load_balancing.hpp"

namespace ex02 {
namespace {

// splitmix64 + Box-Muller: the same numbers with every compiler and standard library.
struct Rng {
  std::uint64_t s;
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  double normal() {
    const double u1 = std::max(uniform(), 1e-300), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};

struct Batch {
  std::vector<double> x;  // [T, d]
  std::vector<int> y;     // [T]
};

Batch sample(const std::vector<double>& centers, int C, int d, int T, Rng& rng) {
  Batch b;
  b.x.resize(static_cast<std::size_t>(T) * d);
  b.y.resize(T);
  for (int t = 0; t < T; ++t) {
    const int c = static_cast<int>(rng.next() % static_cast<std::uint64_t>(C));
    b.y[t] = c;
    for (int i = 0; i < d; ++i) b.x[t * d + i] = centers[c * d + i] + 0.7 * rng.normal();
  }
  return b;
}

struct Model {
  int d, E, K, C;
  std::vector<double> wr;    // [E, d]
  std::vector<double> v;     // [E, C, d]
  std::vector<double> c;     // [E, C]
  std::vector<double> bias;  // [E], chooses only
};

// Top-k of s (ties to the lower index).
void topk(const double* s, int E, int K, std::vector<int>& idx) {
  idx.resize(E);
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + K, idx.end(),
                    [s](int a, int b) { return s[a] > s[b] || (s[a] == s[b] && a < b); });
  idx.resize(K);
}

void softmax(const double* l, int n, double* p) {
  const double m = *std::max_element(l, l + n);
  double s = 0;
  for (int i = 0; i < n; ++i) s += p[i] = std::exp(l[i] - m);
  for (int i = 0; i < n; ++i) p[i] /= s;
}

// Forward (and, when grads are given, backward) over a batch. Returns the mean cross-entropy;
// loads receives the top-k assignments per expert; logits_out the router logits [T, E].
double step(const Model& m, const Batch& b, std::vector<std::int64_t>& loads,
            std::vector<double>& logits_out, std::vector<double>* dlogits, Model* grad) {
  const int T = static_cast<int>(b.y.size()), d = m.d, E = m.E, K = m.K, C = m.C;
  loads.assign(E, 0);
  logits_out.assign(static_cast<std::size_t>(T) * E, 0.0);
  std::vector<double> p(E), sel(E), z(C), q(C), dz(C), o(static_cast<std::size_t>(K) * C);
  std::vector<int> idx;
  double loss = 0;
  for (int t = 0; t < T; ++t) {
    const double* x = b.x.data() + static_cast<std::size_t>(t) * d;
    double* l = logits_out.data() + static_cast<std::size_t>(t) * E;
    for (int e = 0; e < E; ++e) {
      double s = 0;
      for (int i = 0; i < d; ++i) s += m.wr[e * d + i] * x[i];
      l[e] = s;
      sel[e] = s + m.bias[e];
    }
    softmax(l, E, p.data());
    topk(sel.data(), E, K, idx);
    std::fill(z.begin(), z.end(), 0.0);
    for (int k = 0; k < K; ++k) {
      const int e = idx[k];
      ++loads[e];
      for (int j = 0; j < C; ++j) {
        double s = m.c[e * C + j];
        for (int i = 0; i < d; ++i) s += m.v[(static_cast<std::size_t>(e) * C + j) * d + i] * x[i];
        o[k * C + j] = s;
        z[j] += p[e] * s;
      }
    }
    softmax(z.data(), C, q.data());
    loss -= std::log(std::max(q[b.y[t]], 1e-300));
    if (!grad) continue;
    for (int j = 0; j < C; ++j) dz[j] = (q[j] - (j == b.y[t] ? 1.0 : 0.0)) / T;
    double* dl = dlogits->data() + static_cast<std::size_t>(t) * E;
    for (int k = 0; k < K; ++k) {
      const int e = idx[k];
      double dg = 0;
      for (int j = 0; j < C; ++j) {
        dg += dz[j] * o[k * C + j];
        const double gj = p[e] * dz[j];
        grad->c[e * C + j] += gj;
        for (int i = 0; i < d; ++i) grad->v[(static_cast<std::size_t>(e) * C + j) * d + i] += gj * x[i];
      }
      // d p_e / d l_j = p_e (delta_ej - p_j)
      for (int j = 0; j < E; ++j) dl[j] += dg * p[e] * ((j == e ? 1.0 : 0.0) - p[j]);
    }
  }
  return loss / T;
}

double spread_of(const std::vector<std::int64_t>& loads) {
  const auto [mn, mx] = std::minmax_element(loads.begin(), loads.end());
  if (*mn == 0) return *mx == 0 ? 1.0 : std::numeric_limits<double>::infinity();
  return static_cast<double>(*mx) / static_cast<double>(*mn);
}

}  // namespace

TrainResult train(const TrainConfig& cfg) {
  Rng rng{cfg.seed};
  const int d = cfg.d, E = cfg.experts, K = cfg.top_k, C = cfg.clusters;
  std::vector<double> centers(static_cast<std::size_t>(C) * d);
  for (auto& v : centers) v = rng.normal();
  Model m{d, E, K, C, {}, {}, {}, {}};
  m.wr.resize(static_cast<std::size_t>(E) * d);
  for (auto& v : m.wr) v = 0.1 * rng.normal();
  m.v.assign(static_cast<std::size_t>(E) * C * d, 0.0);
  m.c.assign(static_cast<std::size_t>(E) * C, 0.0);
  m.bias.assign(E, 0.0);

  const Batch eval = sample(centers, C, d, 2048, rng);
  std::vector<std::int64_t> loads;
  std::vector<double> logits;
  TrainResult r;
  r.task_loss_first = step(m, eval, loads, logits, nullptr, nullptr);

  Model g = m;
  std::vector<double> dlogits;
  for (int s = 0; s < cfg.steps; ++s) {
    const Batch b = sample(centers, C, d, cfg.batch, rng);
    std::fill(g.wr.begin(), g.wr.end(), 0.0);
    std::fill(g.v.begin(), g.v.end(), 0.0);
    std::fill(g.c.begin(), g.c.end(), 0.0);
    dlogits.assign(static_cast<std::size_t>(cfg.batch) * E, 0.0);
    step(m, b, loads, logits, &dlogits, &g);
    if (cfg.balancing == Balancing::aux_loss) aux_loss(logits, cfg.batch, E, K, cfg.alpha, dlogits);
    // Router gradient: dlogits [T, E] times x [T, d].
    for (int t = 0; t < cfg.batch; ++t)
      for (int e = 0; e < E; ++e) {
        const double dl = dlogits[static_cast<std::size_t>(t) * E + e];
        for (int i = 0; i < d; ++i) g.wr[e * d + i] += dl * b.x[static_cast<std::size_t>(t) * d + i];
      }
    for (std::size_t i = 0; i < m.wr.size(); ++i) m.wr[i] -= cfg.lr * g.wr[i];
    for (std::size_t i = 0; i < m.v.size(); ++i) m.v[i] -= cfg.lr * g.v[i];
    for (std::size_t i = 0; i < m.c.size(); ++i) m.c[i] -= cfg.lr * g.c[i];
    if (cfg.balancing == Balancing::bias) update_bias(m.bias, loads, cfg.gamma);
  }
  r.task_loss_last = step(m, eval, r.loads, logits, nullptr, nullptr);
  r.spread = spread_of(r.loads);
  return r;
}

}  // namespace ex02
