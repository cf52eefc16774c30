// Exercise 01's test: your functions against tilemoe's float64 reference on random layers.
#include <gtest/gtest.h>

#include <cmath>

#include "moe_forward.hpp"
#include "tilemoe/tilemoe.hpp"

using namespace exercise01;

namespace {
// A SimpleMoe holding the same weights as a tilemoe layer (w13 = gate rows then up rows).
SimpleMoe from_tilemoe(const tilemoe::MoeConfig& c, const tilemoe::MoeWeights& w) {
  SimpleMoe m;
  m.d = static_cast<int>(c.d_model);
  m.n = static_cast<int>(c.d_expert);
  m.num_experts = c.num_experts;
  m.top_k = c.top_k;
  m.router = w.router.to_floats();
  const std::vector<float> w13 = w.w13.to_floats();
  const std::size_t nd = static_cast<std::size_t>(m.n) * m.d;
  for (int e = 0; e < m.num_experts; ++e) {
    const float* base = w13.data() + 2 * nd * e;
    m.w_gate.insert(m.w_gate.end(), base, base + nd);
    m.w_up.insert(m.w_up.end(), base + nd, base + 2 * nd);
  }
  m.w_down = w.w2.to_floats();
  return m;
}
}  // namespace

TEST(Exercise01, Softmax) {
  const std::vector<float> p = softmax({0.0f, std::log(3.0f), 1000.0f, 1000.0f});
  EXPECT_NEAR(p[2], 0.5f, 1e-6);
  EXPECT_NEAR(p[3], 0.5f, 1e-6);
  const std::vector<float> q = softmax({0.0f, std::log(3.0f)});
  EXPECT_NEAR(q[0], 0.25f, 1e-6);
  EXPECT_NEAR(q[1], 0.75f, 1e-6);
}

TEST(Exercise01, TopKBreaksTiesTowardLowerIndex) {
  EXPECT_EQ(top_k({0.1f, 0.4f, 0.2f, 0.4f}, 2), (std::vector<int>{1, 3}));
  EXPECT_EQ(top_k({0.5f, 0.5f, 0.5f}, 3), (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(top_k({0.3f, 0.1f, 0.9f}, 1), (std::vector<int>{2}));
}

TEST(Exercise01, ForwardMatchesReference) {
  for (int trial = 0; trial < 4; ++trial) {
    tilemoe::MoeConfig c;
    c.d_model = 24 + 8 * trial;
    c.d_expert = 16 + 4 * trial;
    c.num_experts = 4 + 3 * trial;
    c.top_k = 1 + trial;
    tilemoe::MoeWeights w = tilemoe::random_weights(c, tilemoe::DType::f32, 10 + trial);
    const int T = 5 + 7 * trial;
    tilemoe::Tensor x = tilemoe::random_tokens(T, c.d_model, tilemoe::DType::f32, 20 + trial);
    tilemoe::Tensor logits = tilemoe::router_logits(w, x);
    tilemoe::Routing r = tilemoe::route(c.router_config(), logits);
    const std::vector<double> ref = tilemoe::reference_forward(c, w, x, r);
    const std::vector<float> mine = moe_forward(from_tilemoe(c, w), x.to_floats(), T);
    EXPECT_LT(tilemoe::relative_error(mine, ref), 1e-5) << "trial " << trial;
  }
}
