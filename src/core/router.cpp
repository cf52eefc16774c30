// Routers on the CPU: scores -> top-k -> weights, for every RouterKind. One template serves the
// fp32 router and the float64 reference. Ties break toward the lower expert index (and, for
// groups, the lower group index): selection compares (score, -index) lexicographically.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "tilemoe/routing.hpp"

namespace tilemoe {
namespace {

// Indices of the k largest values of v[0..n), best first, lower index first on ties.
template <class Real>
void top_indices(const Real* v, int n, int k, std::vector<int>& idx) {
  idx.resize(static_cast<std::size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [v](int a, int b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  idx.resize(static_cast<std::size_t>(k));
}

// v[0] + ... + v[n - 1] in the order 32 GPU lanes add them (src/cuda/router.cu), so that the
// GPU's softmax agrees with this one to the bit: lane l adds v[l], v[l + 32], ... in turn, then
// the 32 partial sums are added pairwise, p[l] + p[l ^ o] for o = 16, 8, 4, 2, 1 (a butterfly of
// shuffles there, after which every lane holds the sum). Lane 0's result needs only the lanes
// below o at each step, where l ^ o = l + o: those are the sums kept here.
template <class Real>
Real lane_order_sum(const Real* v, int n) {
  Real p[32] = {};
  for (int l = 0; l < 32; ++l)
    for (int i = l; i < n; i += 32) p[l] += v[i];
  for (int o = 16; o > 0; o >>= 1)
    for (int l = 0; l < o; ++l) p[l] = p[l] + p[l + o];
  return p[0];
}

template <class Real>
void softmax(const Real* x, int n, Real* out) {
  Real m = x[0];
  for (int i = 1; i < n; ++i) m = std::max(m, x[i]);
  for (int i = 0; i < n; ++i) out[i] = std::exp(x[i] - m);
  const Real s = lane_order_sum(out, n);
  for (int i = 0; i < n; ++i) out[i] /= s;
}

template <class Real>
Real sigmoid(Real x) { return Real(1) / (Real(1) + std::exp(-x)); }

template <class Real>
Routing route_impl(const RouterConfig& cfg, const Real* logits, std::int64_t T, const Real* bias) {
  cfg.validate();
  check_arg(T >= 0, "num_tokens", T, ">= 0");
  const int E = cfg.num_experts, K = cfg.top_k;
  for (std::int64_t i = 0; i < T * E; ++i)
    if (!std::isfinite(static_cast<double>(logits[i])))
      throw InvalidArgument(detail::concat("logits[", i / E, ", ", i % E, "] = ", logits[i],
                                           ": expected finite router logits"));
  if (bias)
    for (int e = 0; e < E; ++e)
      check_arg(std::isfinite(static_cast<double>(bias[e])), "router_bias", bias[e], "finite values");

  std::vector<std::int32_t> ids(static_cast<std::size_t>(T * K));
  std::vector<float> weights(static_cast<std::size_t>(T * K));
  std::vector<Real> score(E), choose(E);
  std::vector<int> idx, gidx;
  const int group_size = E / cfg.n_groups;
  std::vector<Real> gscore(cfg.n_groups), masked(E), wk(K), sel(K);

  for (std::int64_t t = 0; t < T; ++t) {
    const Real* l = logits + t * E;
    switch (cfg.kind) {
      case RouterKind::softmax_topk:
      case RouterKind::top1: {
        softmax(l, E, score.data());
        top_indices(l, E, K, idx);  // logits order = probability order, without rounding ties
        Real sum = 0;
        for (int k = 0; k < K; ++k) sum += wk[k] = score[idx[k]];
        if (cfg.renormalize && cfg.kind == RouterKind::softmax_topk)
          for (int k = 0; k < K; ++k) wk[k] /= sum;
        break;
      }
      case RouterKind::topk_softmax: {
        top_indices(l, E, K, idx);
        for (int k = 0; k < K; ++k) sel[k] = l[idx[k]];
        softmax(sel.data(), K, wk.data());
        break;
      }
      case RouterKind::sigmoid_group_topk: {
        for (int e = 0; e < E; ++e) {
          score[e] = sigmoid(l[e]);
          choose[e] = score[e] + (bias ? bias[e] : Real(0));
        }
        // Group score: sum of the two best choice scores in the group (one if the group has one).
        for (int g = 0; g < cfg.n_groups; ++g) {
          top_indices(choose.data() + g * group_size, group_size, std::min(2, group_size), gidx);
          Real s = 0;
          for (int j : gidx) s += choose[g * group_size + j];
          gscore[g] = s;
        }
        masked = choose;
        if (cfg.topk_groups < cfg.n_groups) {
          top_indices(gscore.data(), cfg.n_groups, cfg.topk_groups, gidx);
          std::vector<char> keep(cfg.n_groups, 0);
          for (int g : gidx) keep[g] = 1;
          for (int e = 0; e < E; ++e)
            if (!keep[e / group_size]) masked[e] = -std::numeric_limits<Real>::infinity();
        }
        top_indices(masked.data(), E, K, idx);
        Real sum = 0;
        for (int k = 0; k < K; ++k) sum += wk[k] = score[idx[k]];
        if (cfg.renormalize)
          for (int k = 0; k < K; ++k) wk[k] /= sum;
        break;
      }
    }
    for (int k = 0; k < K; ++k) {
      ids[t * K + k] = idx[k];
      weights[t * K + k] = static_cast<float>(wk[k] * static_cast<Real>(cfg.routed_scale));
    }
  }
  return Routing::from_topk(T, E, K, std::move(ids), std::move(weights));
}

}  // namespace

Routing Routing::from_topk(std::int64_t T, int E, int K, std::vector<std::int32_t> ids,
                           std::vector<float> weights) {
  check_arg(static_cast<std::int64_t>(ids.size()) == T * K, "ids.size()", ids.size(),
            detail::concat("T * K = ", T * K));
  check_arg(weights.size() == ids.size(), "weights.size()", weights.size(),
            detail::concat("ids.size() = ", ids.size()));
  Routing r;
  r.num_tokens = T;
  r.num_experts = E;
  r.token_offsets.resize(static_cast<std::size_t>(T + 1));
  for (std::int64_t t = 0; t <= T; ++t) r.token_offsets[t] = t * K;
  r.expert = std::move(ids);
  r.weight = std::move(weights);
  return r;
}

void Routing::validate() const {
  check_arg(num_experts >= 1, "routing.num_experts", num_experts, ">= 1");
  check_arg(static_cast<std::int64_t>(token_offsets.size()) == num_tokens + 1,
            "routing.token_offsets.size()", token_offsets.size(),
            detail::concat("num_tokens + 1 = ", num_tokens + 1));
  check_arg(token_offsets.front() == 0, "routing.token_offsets[0]", token_offsets.front(), "0");
  check_arg(token_offsets.back() == num_assignments(), "routing.token_offsets[T]",
            token_offsets.back(), detail::concat("the number of assignments ", num_assignments()));
  check_arg(weight.size() == expert.size(), "routing.weight.size()", weight.size(),
            detail::concat("expert.size() = ", expert.size()));
  std::vector<std::int64_t> seen(static_cast<std::size_t>(num_experts), -1);
  for (std::int64_t t = 0; t < num_tokens; ++t) {
    if (token_offsets[t + 1] < token_offsets[t])
      check_arg(false, "routing.token_offsets", t, "non-decreasing offsets");
    for (std::int64_t a = token_offsets[t]; a < token_offsets[t + 1]; ++a) {
      const int e = expert[a];
      // The messages are built only on failure: this loop runs over every assignment.
      if (e < 0 || e >= num_experts)
        check_arg(false, "routing.expert", e, detail::concat("0 <= expert < ", num_experts));
      if (!std::isfinite(weight[a])) check_arg(false, "routing.weight", weight[a], "finite weights");
      if (seen[e] == t)
        check_arg(false, "routing.expert", e, detail::concat("no expert twice for one token (token ", t, ")"));
      seen[e] = t;
    }
  }
}

std::vector<float> router_probabilities(const RouterConfig& cfg, const float* logits, std::int64_t T) {
  cfg.validate();
  const int E = cfg.num_experts;
  std::vector<float> p(static_cast<std::size_t>(T * E));
  for (std::int64_t t = 0; t < T; ++t) {
    if (cfg.kind == RouterKind::sigmoid_group_topk) {
      for (int e = 0; e < E; ++e) p[t * E + e] = sigmoid(logits[t * E + e]);
    } else {
      softmax(logits + t * E, E, p.data() + t * E);
    }
  }
  return p;
}

Routing route(const RouterConfig& cfg, const float* logits, std::int64_t T, const float* bias) {
  return route_impl<float>(cfg, logits, T, bias);
}

Routing route(const RouterConfig& cfg, const Tensor& logits, const Tensor& bias) {
  check_dtype(logits, "logits", {DType::f32});
  check_shape(logits, "logits", {-1, cfg.num_experts});
  Tensor l = logits.is_cuda() ? logits.to(Device::cpu) : logits;
  Tensor b;
  if (bias.numel() > 0) {
    check_dtype(bias, "router_bias", {DType::f32});
    check_shape(bias, "router_bias", {cfg.num_experts});
    b = bias.is_cuda() ? bias.to(Device::cpu) : bias;
  }
  return route(cfg, l.data<float>(), l.dim(0), b.numel() > 0 ? b.data<float>() : nullptr);
}

Routing route_reference(const RouterConfig& cfg, const double* logits, std::int64_t T, const double* bias) {
  return route_impl<double>(cfg, logits, T, bias);
}

}  // namespace tilemoe
