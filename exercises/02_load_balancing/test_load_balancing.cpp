// Exercise 02's test: the auxiliary loss and its gradient, the bias update, and a small router
// trained by SGD on clustered tokens: without balancing the busiest expert gets at least 5x the
// tokens of the least busy; with balancing (either way) the spread stays within 2x while the
// task loss still falls. Runs against the solution by default (see CMakeLists.txt).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>

#include "load_balancing.hpp"
#include "tilemoe/balance.hpp"

namespace {

std::vector<double> random_logits(int T, int E, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> u(-2.0, 2.0);
  std::vector<double> l(static_cast<std::size_t>(T) * E);
  for (auto& v : l) v = u(g);
  return l;
}

void print(const char* what, std::uint64_t seed, const ex02::TrainResult& r) {
  std::printf("  %-13s seed %llu: task loss %.3f -> %.3f, loads", what, static_cast<unsigned long long>(seed),
              r.task_loss_first, r.task_loss_last);
  for (auto l : r.loads) std::printf(" %lld", static_cast<long long>(l));
  std::printf(", max/min %.2f\n", r.spread);
}

}  // namespace

TEST(Exercise02, AuxLossValueMatchesTheLibrary) {
  for (int K : {1, 2}) {
    const int T = 20, E = 6;
    const auto l = random_logits(T, E, 3 + K);
    std::vector<double> grad(l.size(), 0.0);
    const double mine = ex02::aux_loss(l, T, E, K, 0.5, grad);
    const auto lib = tilemoe::switch_aux_loss(l, T, E, K, 0.5);
    EXPECT_NEAR(mine, lib.value, 1e-12) << "K " << K;
    for (std::size_t i = 0; i < grad.size(); ++i) EXPECT_NEAR(grad[i], lib.grad[i], 1e-12) << i;
  }
}

TEST(Exercise02, AuxLossGradientMatchesFiniteDifferences) {
  const int T = 10, E = 5, K = 2;
  auto l = random_logits(T, E, 42);
  std::vector<double> grad(l.size(), 1.0);  // aux_loss adds into grad
  std::vector<double> scratch(l.size());
  ex02::aux_loss(l, T, E, K, 0.3, grad);
  double largest = 0;
  for (std::size_t i = 0; i < l.size(); ++i) {
    const double v = l[i], eps = 1e-6;
    l[i] = v + eps;
    const double up = ex02::aux_loss(l, T, E, K, 0.3, scratch);
    l[i] = v - eps;
    const double dn = ex02::aux_loss(l, T, E, K, 0.3, scratch);
    l[i] = v;
    const double fd = (up - dn) / (2 * eps);
    EXPECT_NEAR(grad[i] - 1.0, fd, 1e-8) << "logit " << i;
    largest = std::max(largest, std::abs(fd));
  }
  EXPECT_GT(largest, 1e-3);  // a loss that does not move is not the loss
}

TEST(Exercise02, BiasMovesTowardTheMeanLoad) {
  std::vector<double> b = {0.0, 0.0, 0.0, 0.0};
  ex02::update_bias(b, {10, 2, 4, 4}, 0.5);  // mean 5
  EXPECT_EQ(b, (std::vector<double>{-0.5, 0.5, 0.5, 0.5}));
  ex02::update_bias(b, {5, 5, 5, 5}, 0.5);
  EXPECT_EQ(b, (std::vector<double>{-0.5, 0.5, 0.5, 0.5}));
}

TEST(Exercise02, TrainingWithoutBalancingCollapses) {
  for (std::uint64_t seed : {1ull, 2ull}) {
    ex02::TrainConfig c;
    c.seed = seed;
    const auto r = ex02::train(c);
    print("no balancing", seed, r);
    EXPECT_LT(r.task_loss_last, 0.5 * r.task_loss_first) << "seed " << seed;
    EXPECT_GE(r.spread, 5.0) << "seed " << seed;
  }
}

TEST(Exercise02, AuxLossKeepsExpertsWithin2x) {
  for (std::uint64_t seed : {1ull, 2ull}) {
    ex02::TrainConfig c;
    c.seed = seed;
    c.balancing = ex02::Balancing::aux_loss;
    const auto r = ex02::train(c);
    print("aux loss", seed, r);
    EXPECT_LT(r.task_loss_last, 0.5 * r.task_loss_first) << "seed " << seed;
    EXPECT_LE(r.spread, 2.0) << "seed " << seed;
  }
}

TEST(Exercise02, BiasKeepsExpertsWithin2x) {
  for (std::uint64_t seed : {1ull, 2ull}) {
    ex02::TrainConfig c;
    c.seed = seed;
    c.balancing = ex02::Balancing::bias;
    const auto r = ex02::train(c);
    print("bias", seed, r);
    EXPECT_LT(r.task_loss_last, 0.5 * r.task_loss_first) << "seed " << seed;
    EXPECT_LE(r.spread, 2.0) << "seed " << seed;
  }
}
