// Routing metadata: a permutation, offsets consistent with counts, stable order.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "tilemoe/tilemoe.hpp"

using namespace tilemoe;

namespace {
void check_invariants(const Routing& r, const RoutingMetadata& m) {
  const std::int64_t A = r.num_assignments();
  ASSERT_EQ(m.offsets.front(), 0);
  ASSERT_EQ(m.offsets.back(), A);
  for (int e = 0; e < r.num_experts; ++e) ASSERT_EQ(m.offsets[e + 1] - m.offsets[e], m.counts[e]);
  std::vector<char> seen(static_cast<std::size_t>(A), 0);
  for (std::int64_t p = 0; p < A; ++p) {
    const std::int64_t a = m.sorted[p];
    ASSERT_GE(a, 0);
    ASSERT_LT(a, A);
    ASSERT_FALSE(seen[a]) << "not a permutation";
    seen[a] = 1;
    ASSERT_EQ(m.slot[a], p);
    const int e = r.expert[a];
    ASSERT_GE(p, m.offsets[e]);
    ASSERT_LT(p, m.offsets[e + 1]);
    // token of a: the t with token_offsets[t] <= a < token_offsets[t+1]
    auto it = std::upper_bound(r.token_offsets.begin(), r.token_offsets.end(), a);
    ASSERT_EQ(m.sorted_token[p], (it - r.token_offsets.begin()) - 1);
    if (p > m.offsets[e]) ASSERT_GT(a, m.sorted[p - 1]) << "not stable";
  }
}
}  // namespace

TEST(Metadata, HandMade) {
  // 3 tokens, E = 4: t0 -> {2, 0}, t1 -> {2, 3}, t2 -> {0, 2}
  Routing r = Routing::from_topk(3, 4, 2, {2, 0, 2, 3, 0, 2}, {.5f, .5f, .5f, .5f, .5f, .5f});
  RoutingMetadata m = build_metadata(r);
  EXPECT_EQ(m.counts, (std::vector<std::int64_t>{2, 0, 3, 1}));
  EXPECT_EQ(m.offsets, (std::vector<std::int64_t>{0, 2, 2, 5, 6}));
  EXPECT_EQ(m.sorted, (std::vector<std::int64_t>{1, 4, 0, 2, 5, 3}));
  EXPECT_EQ(m.sorted_token, (std::vector<std::int64_t>{0, 2, 0, 1, 2, 1}));
  check_invariants(r, m);
}

TEST(Metadata, RandomRoutingsKeepInvariants) {
  std::mt19937_64 gen(11);
  for (int trial = 0; trial < 20; ++trial) {
    const int E = 1 + static_cast<int>(gen() % 300);
    const int K = 1 + static_cast<int>(gen() % std::min(E, 16));
    const std::int64_t T = 1 + static_cast<std::int64_t>(gen() % 500);
    std::vector<float> logits(static_cast<std::size_t>(T * E));
    std::normal_distribution<float> nd;
    for (auto& v : logits) v = nd(gen);
    RouterConfig c;
    c.num_experts = E;
    c.top_k = K;
    Routing r = route(c, logits.data(), T);
    check_invariants(r, build_metadata(r));
  }
}

TEST(Metadata, VariableExpertsPerToken) {
  Routing r;
  r.num_tokens = 3;
  r.num_experts = 5;
  r.token_offsets = {0, 0, 3, 4};  // token 0 has none, token 1 three, token 2 one
  r.expert = {4, 1, 0, 4};
  r.weight = {1, 1, 1, 1};
  r.validate();
  check_invariants(r, build_metadata(r));
  r.expert = {4, 1, 4, 0};  // token 1 twice on expert 4
  EXPECT_THROW(r.validate(), InvalidArgument);
}
