// Load balancing: the auxiliary and z losses (values, gradients against finite differences),
// DeepSeek-V3's bias update, capacity dropping, and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>

#include "expect_invalid.hpp"
#include "tilemoe/balance.hpp"
#include "tilemoe/tilemoe.hpp"

using namespace tilemoe;

namespace {

std::vector<double> random_logits(std::int64_t T, int E, std::uint64_t seed, double scale = 1.0) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> n(0.0, scale);
  std::vector<double> l(static_cast<std::size_t>(T * E));
  for (auto& v : l) v = n(g);
  return l;
}

// Central differences of f at every logit, in double.
template <class F>
std::vector<double> numeric_grad(F f, std::vector<double> l, double eps = 1e-6) {
  std::vector<double> g(l.size());
  for (std::size_t i = 0; i < l.size(); ++i) {
    const double v = l[i];
    l[i] = v + eps;
    const double up = f(l);
    l[i] = v - eps;
    const double dn = f(l);
    l[i] = v;
    g[i] = (up - dn) / (2 * eps);
  }
  return g;
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

double max_abs(const std::vector<double>& a) {
  double m = 0;
  for (double v : a) m = std::max(m, std::abs(v));
  return m;
}

}  // namespace

TEST(BalanceAuxLoss, ValueAtBalanceAndCollapse) {
  const int E = 8;
  const std::int64_t T = 64;
  std::vector<double> balanced(T * E, 0.0), collapsed(T * E, 0.0);
  for (std::int64_t t = 0; t < T; ++t) {
    balanced[t * E + t % E] = 40.0;  // one-hot probabilities, each expert 1/E of the tokens
    collapsed[t * E] = 40.0;
  }
  EXPECT_NEAR(switch_aux_loss(balanced, T, E, 1, 0.01).value, 0.01, 1e-12);
  EXPECT_NEAR(switch_aux_loss(collapsed, T, E, 1, 0.01).value, 0.01 * E, 1e-12);
  // Uniform logits: ties go to the lower index, so with K = 2 experts 0 and 1 take everything:
  // f = (1/2, 1/2, 0, ...), P = 1/E -> L = alpha * E * (1/E) = alpha.
  std::vector<double> flat(T * E, 0.0);
  const auto r = switch_aux_loss(flat, T, E, 2, 0.5);
  EXPECT_NEAR(r.value, 0.5, 1e-12);
  // Its gradient (descent goes against it) pushes experts 0 and 1 down and the others up:
  // dL/dl_j = alpha * E / T * p_j * (f_j - sum_i f_i p_i) with p_j = 1/8, sum_i f_i p_i = 1/8.
  EXPECT_NEAR(r.grad[0], 0.5 * 8 / 64 * 0.125 * (0.5 - 0.125), 1e-15);
  EXPECT_NEAR(r.grad[2], 0.5 * 8 / 64 * 0.125 * (0.0 - 0.125), 1e-15);
}

TEST(BalanceAuxLoss, GradientMatchesFiniteDifferences) {
  for (int K : {1, 2, 3}) {
    const std::int64_t T = 13;
    const int E = 8;
    const auto l = random_logits(T, E, 100 + K);
    const auto r = switch_aux_loss(l, T, E, K, 0.1);
    const auto num = numeric_grad([&](const std::vector<double>& v) { return switch_aux_loss(v, T, E, K, 0.1).value; }, l);
    EXPECT_LT(max_abs_diff(r.grad, num), 1e-8 * std::max(1.0, max_abs(num))) << "K " << K;
    EXPECT_GT(max_abs(r.grad), 1e-4);
  }
}

TEST(BalanceZLoss, ValueAndGradient) {
  std::vector<double> zeros(2 * 4, 0.0);
  EXPECT_NEAR(router_z_loss(zeros, 2, 4, 1.0).value, std::log(4.0) * std::log(4.0), 1e-12);
  const std::int64_t T = 9;
  const int E = 16;
  const auto l = random_logits(T, E, 7, 3.0);
  const auto r = router_z_loss(l, T, E, 1e-2);
  const auto num = numeric_grad([&](const std::vector<double>& v) { return router_z_loss(v, T, E, 1e-2).value; }, l);
  EXPECT_LT(max_abs_diff(r.grad, num), 1e-9 * std::max(1.0, max_abs(num)));
  EXPECT_GT(max_abs(r.grad), 1e-4);
  // Large logits stay finite (logsumexp is shifted).
  std::vector<double> big(4, 800.0);
  EXPECT_TRUE(std::isfinite(router_z_loss(big, 1, 4).value));
}

TEST(BalanceBias, UpdateMovesTowardTheMean) {
  std::vector<float> b = {0.f, 0.f, 0.f, 0.f};
  update_expert_bias(b, {10, 2, 4, 4}, 0.5f);  // mean 5
  EXPECT_EQ(b, (std::vector<float>{-0.5f, 0.5f, 0.5f, 0.5f}));
  update_expert_bias(b, {5, 5, 5, 5}, 0.5f);   // balanced: no move
  EXPECT_EQ(b, (std::vector<float>{-0.5f, 0.5f, 0.5f, 0.5f}));
  std::vector<float> c = {1.f, 1.f, 1.f};
  update_expert_bias(c, {3, 6, 3}, 0.25f);     // mean 4
  EXPECT_EQ(c, (std::vector<float>{1.25f, 0.75f, 1.25f}));
}

TEST(BalanceBias, LossFreeBalancingEvensASkewedRouter) {
  // Fixed, skewed logits (Zipf-like popularity); only the bias learns. DeepSeek-V3's router.
  RouterConfig rc;
  rc.kind = RouterKind::sigmoid_group_topk;
  rc.num_experts = 16;
  rc.top_k = 2;
  const std::int64_t T = 2048;
  std::mt19937_64 g(5);
  std::normal_distribution<float> n(0.f, 1.f);
  std::vector<float> logits(T * 16);
  for (std::int64_t t = 0; t < T; ++t)
    for (int e = 0; e < 16; ++e) logits[t * 16 + e] = n(g) - 1.5f * std::log(1.0f + e);
  std::vector<float> bias(16, 0.f);
  const double spread0 = load_spread(expert_loads(route(rc, logits.data(), T, bias.data())));
  // The sign update oscillates around balance: judge the loads summed over the last 50 steps.
  std::vector<std::int64_t> recent(16, 0);
  for (int step = 0; step < 300; ++step) {
    const auto loads = expert_loads(route(rc, logits.data(), T, bias.data()));
    if (step >= 250)
      for (int e = 0; e < 16; ++e) recent[e] += loads[e];
    update_expert_bias(bias, loads, 0.01f);
  }
  const double last = load_spread(expert_loads(route(rc, logits.data(), T, bias.data())));
  EXPECT_GE(spread0, 5.0);
  EXPECT_LE(load_spread(recent), 1.5);
  EXPECT_LE(last, 2.0);
}

TEST(BalanceLoads, SpreadAndLoads) {
  EXPECT_DOUBLE_EQ(load_spread({4, 2, 3}), 2.0);
  EXPECT_TRUE(std::isinf(load_spread({0, 3})));
  EXPECT_DOUBLE_EQ(load_spread({0, 0}), 1.0);
  const Routing r = Routing::from_topk(3, 3, 2, {0, 1, 1, 2, 0, 1}, {1, 1, 1, 1, 1, 1});
  EXPECT_EQ(expert_loads(r), (std::vector<std::int64_t>{2, 3, 1}));
}

TEST(BalanceCapacity, DropsPastCapacityInTokenOrder) {
  EXPECT_EQ(expert_capacity(10, 4, 1.0), 3);
  EXPECT_EQ(expert_capacity(8, 4, 1.0), 2);
  EXPECT_EQ(expert_capacity(8, 4, 1.25), 3);
  EXPECT_EQ(expert_capacity(8, 2, 0.75), 3);
  // t0 {0, 1}, t1 {0, 1}, t2 {1, 0}, t3 {0, 1}; capacity ceil(0.75 * 8 / 2) = 3.
  const Routing r = Routing::from_topk(4, 2, 2, {0, 1, 0, 1, 1, 0, 0, 1},
                                       {.6f, .4f, .7f, .3f, .8f, .2f, .9f, .1f});
  std::int64_t dropped = -1;
  const Routing c = apply_capacity(r, 0.75, &dropped);
  EXPECT_EQ(dropped, 2);
  EXPECT_EQ(c.token_offsets, (std::vector<std::int64_t>{0, 2, 4, 6, 6}));
  EXPECT_EQ(c.expert, (std::vector<std::int32_t>{0, 1, 0, 1, 1, 0}));
  EXPECT_EQ(c.weight, (std::vector<float>{.6f, .4f, .7f, .3f, .8f, .2f}));
  // A generous factor keeps everything.
  const Routing all = apply_capacity(r, 2.0, &dropped);
  EXPECT_EQ(dropped, 0);
  EXPECT_EQ(all.expert, r.expert);
  // The forward runs on a capacity-limited routing (token 3 has no expert left).
  const MoeConfig& cfg = preset("tiny");
  const auto w = random_weights(cfg, DType::f32, 1);
  const auto x = random_tokens(64, cfg.d_model, DType::f32, 2);
  const Routing topk = route(cfg.router_config(), router_logits(w, x));
  const Routing capped = apply_capacity(topk, 1.0, &dropped);
  const auto loads = expert_loads(capped);
  for (auto l : loads) EXPECT_LE(l, expert_capacity(64 * 2, 8, 1.0));
  const RoutingMetadata meta = build_metadata(capped);
  const Tensor y = experts_forward(cfg, w, x, capped, meta, Algorithm::grouped);
  const Tensor out = combine(capped, meta, y);
  EXPECT_LT(relative_error(out.to_floats(), reference_forward(cfg, w, x, capped)), 1e-5);
}

TEST(BalanceErrors, BadInputThrowsNamingTheArgument) {
  std::vector<double> l(2 * 4, 0.0);
  expect_invalid([&] { switch_aux_loss(l, 2, 4, 5); }, "top_k = 5");
  expect_invalid([&] { switch_aux_loss(l, 2, 4, 0); }, "top_k = 0");
  expect_invalid([&] { switch_aux_loss(l, 3, 4, 1); }, "logits.size()");
  expect_invalid([&] { switch_aux_loss(l, 2, 4, 1, std::nan("")); }, "alpha");
  l[5] = std::numeric_limits<double>::quiet_NaN();
  expect_invalid([&] { switch_aux_loss(l, 2, 4, 2); }, "logits[1, 1]");
  expect_invalid([&] { router_z_loss(l, 2, 4); }, "logits[1, 1]");
  std::vector<float> b(3);
  expect_invalid([&] { update_expert_bias(b, {1, 2}, 0.1f); }, "bias.size()");
  expect_invalid([&] { update_expert_bias(b, {1, 2, 3}, -1.f); }, "gamma");
  expect_invalid([] { expert_capacity(8, 4, 0.0); }, "capacity_factor = 0");
  expect_invalid([] { expert_capacity(8, 4, std::nan("")); }, "capacity_factor");
  expect_invalid([] { load_spread({}); }, "loads.size()");
}
