// Routers on hand-computed cases, ties, and against the float64 reference on random logits.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "tilemoe/tilemoe.hpp"

using namespace tilemoe;

namespace {
RouterConfig rc(RouterKind kind, int E, int K, bool renorm = true) {
  RouterConfig c;
  c.kind = kind;
  c.num_experts = E;
  c.top_k = K;
  c.renormalize = renorm;
  return c;
}
}  // namespace

TEST(Router, SoftmaxTopkHandComputed) {
  // logits (0, ln 2, ln 4, ln 1): p = (1, 2, 4, 1) / 8; top-2 = experts 2 then 1.
  const float l[4] = {0.0f, std::log(2.0f), std::log(4.0f), 0.0f};
  Routing r = route(rc(RouterKind::softmax_topk, 4, 2, false), l, 1);
  ASSERT_EQ(r.num_assignments(), 2);
  EXPECT_EQ(r.expert[0], 2);
  EXPECT_EQ(r.expert[1], 1);
  EXPECT_NEAR(r.weight[0], 0.5f, 1e-6);
  EXPECT_NEAR(r.weight[1], 0.25f, 1e-6);
  Routing rn = route(rc(RouterKind::softmax_topk, 4, 2, true), l, 1);
  EXPECT_NEAR(rn.weight[0], 2.0f / 3.0f, 1e-6);
  EXPECT_NEAR(rn.weight[1], 1.0f / 3.0f, 1e-6);
}

TEST(Router, TopkSoftmaxHandComputed) {
  // top-2 of logits (1, 3, 2): experts 1 and 2; softmax over (3, 2).
  const float l[3] = {1.0f, 3.0f, 2.0f};
  Routing r = route(rc(RouterKind::topk_softmax, 3, 2), l, 1);
  EXPECT_EQ(r.expert[0], 1);
  EXPECT_EQ(r.expert[1], 2);
  const double e = std::exp(1.0);
  EXPECT_NEAR(r.weight[0], e / (e + 1), 1e-6);
  EXPECT_NEAR(r.weight[1], 1 / (e + 1), 1e-6);
}

TEST(Router, Top1IsSwitch) {
  const float l[3] = {0.0f, 0.0f, std::log(2.0f)};  // p = (1, 1, 2) / 4
  Routing r = route(rc(RouterKind::top1, 3, 1), l, 1);
  EXPECT_EQ(r.expert[0], 2);
  EXPECT_NEAR(r.weight[0], 0.5f, 1e-6);  // the probability, not renormalized to 1
  RouterConfig bad = rc(RouterKind::top1, 3, 2);
  EXPECT_THROW(route(bad, l, 1), InvalidArgument);
}

TEST(Router, TiesBreakTowardLowerIndex) {
  const float l[6] = {1, 2, 2, 2, 0, 2};
  for (auto kind : {RouterKind::softmax_topk, RouterKind::topk_softmax}) {
    Routing r = route(rc(kind, 6, 3), l, 1);
    EXPECT_EQ(r.expert[0], 1);
    EXPECT_EQ(r.expert[1], 2);
    EXPECT_EQ(r.expert[2], 3);
  }
  const float z[4] = {0, 0, 0, 0};
  RouterConfig c = rc(RouterKind::sigmoid_group_topk, 4, 2);
  c.n_groups = 2;
  c.topk_groups = 1;
  Routing r = route(c, z, 1);  // both groups tie: group 0 kept, experts 0 and 1
  EXPECT_EQ(r.expert[0], 0);
  EXPECT_EQ(r.expert[1], 1);
}

TEST(Router, DeepSeekGroupLimitedHandComputed) {
  // 8 experts, 4 groups of 2, keep 2 groups, top-2, scale 2.5.
  RouterConfig c = rc(RouterKind::sigmoid_group_topk, 8, 2);
  c.n_groups = 4;
  c.topk_groups = 2;
  c.routed_scale = 2.5f;
  // Expert 7 has the best single score but its group (3) sums lower than groups 0 and 2.
  const float l[8] = {1.0f, 1.0f, -3.0f, -3.0f, 0.5f, 1.2f, 2.0f, -4.0f};
  Routing r = route(c, l, 1);
  // groups: g0 = s(1)+s(1) = 1.462, g1 small, g2 = s(.5)+s(1.2) = 1.391, g3 = s(2)+s(-4) = 0.899
  // kept: g0, g2; best two experts in them: 5 (s(1.2) = .769), then 0 (s(1) = .731; 0 before 1)
  ASSERT_EQ(r.expert[0], 5);
  ASSERT_EQ(r.expert[1], 0);
  const double s5 = 1 / (1 + std::exp(-1.2)), s0 = 1 / (1 + std::exp(-1.0));
  EXPECT_NEAR(r.weight[0], 2.5 * s5 / (s5 + s0), 1e-6);
  EXPECT_NEAR(r.weight[1], 2.5 * s0 / (s5 + s0), 1e-6);
  // The bias chooses but never weighs: a large bias on expert 1 makes it win, weight from s(1).
  const float bias[8] = {0, 1, 0, 0, 0, 0, 0, 0};
  Routing rb = route(c, l, 1, bias);
  EXPECT_EQ(rb.expert[0], 1);
  EXPECT_EQ(rb.expert[1], 5);
  EXPECT_NEAR(rb.weight[0], 2.5 * s0 / (s5 + s0), 1e-6);
}

TEST(Router, MatchesFloat64ReferenceOnRandomLogits) {
  std::mt19937_64 gen(7);
  std::normal_distribution<double> nd(0.0, 2.0);
  for (auto kind : {RouterKind::softmax_topk, RouterKind::topk_softmax, RouterKind::sigmoid_group_topk,
                    RouterKind::top1}) {
    for (int E : {1, 7, 64, 256, 1024}) {
      RouterConfig c = rc(kind, E, kind == RouterKind::top1 ? 1 : std::min(E, 8));
      if (kind == RouterKind::sigmoid_group_topk && E % 8 == 0) {
        c.n_groups = 8;
        c.topk_groups = 4;
      }
      const int T = 50;
      std::vector<float> lf(static_cast<std::size_t>(T * E));
      std::vector<double> ld(lf.size()), bd(E);
      std::vector<float> bf(E);
      for (std::size_t i = 0; i < lf.size(); ++i) ld[i] = lf[i] = static_cast<float>(nd(gen));
      for (int e = 0; e < E; ++e) bd[e] = bf[e] = static_cast<float>(0.01 * nd(gen));
      Routing a = route(c, lf.data(), T, bf.data());
      Routing b = route_reference(c, ld.data(), T, bd.data());
      a.validate();
      ASSERT_EQ(a.expert, b.expert) << to_string(kind) << " E=" << E;
      for (std::size_t i = 0; i < a.weight.size(); ++i)
        EXPECT_NEAR(a.weight[i], b.weight[i], 1e-6 * std::max(1.0f, std::abs(b.weight[i])));
    }
  }
}

TEST(Router, RejectsBadInput) {
  const float l[4] = {0, 1, 2, 3};
  EXPECT_THROW(route(rc(RouterKind::softmax_topk, 4, 5), l, 1), InvalidArgument);  // K > E
  EXPECT_THROW(route(rc(RouterKind::softmax_topk, 4, 0), l, 1), InvalidArgument);  // K = 0
  EXPECT_THROW(route(rc(RouterKind::softmax_topk, 0, 1), l, 1), InvalidArgument);  // E = 0
  const float nan[4] = {0, std::nanf(""), 2, 3};
  try {
    route(rc(RouterKind::softmax_topk, 4, 2), nan, 1);
    FAIL() << "NaN logits accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("logits[0, 1]"), std::string::npos) << e.what();
  }
  const float inf[4] = {0, 1, INFINITY, 3};
  EXPECT_THROW(route(rc(RouterKind::topk_softmax, 4, 2), inf, 1), InvalidArgument);
  RouterConfig g = rc(RouterKind::sigmoid_group_topk, 8, 2);
  g.n_groups = 3;  // does not divide 8
  EXPECT_THROW(route(g, l, 0), InvalidArgument);
  g.n_groups = 4;
  g.topk_groups = 1;
  g.top_k = 3;  // more than the 2 experts of one kept group
  try {
    route(g, l, 0);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("top_k = 3"), std::string::npos) << e.what();
  }
}
