// Tile-aware token rounding: every rule on hand-made counts and routings (exact expected
// output), invariants on random routings, bad input, and the forward with rounded routings
// against the float64 reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>

#include "expect_invalid.hpp"
#include "tilemoe/balance.hpp"
#include "tilemoe/tilemoe.hpp"

using namespace tilemoe;
using Counts = std::vector<std::int64_t>;

namespace {

RoundingOptions opts(RoundingRule rule, int tile, std::uint64_t seed = 0) {
  RoundingOptions o;
  o.rule = rule;
  o.tile = tile;
  o.seed = seed;
  return o;
}

// The stochastic draw as docs/token_rounding.md specifies it, written out independently.
double spec_draw(std::uint64_t seed, std::uint64_t e) {
  std::uint64_t z = seed + (e + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) / 9007199254740992.0;
}

// A token's (expert -> weight) list.
std::vector<std::pair<int, float>> token_row(const Routing& r, std::int64_t t) {
  std::vector<std::pair<int, float>> v;
  for (auto a = r.token_offsets[t]; a < r.token_offsets[t + 1]; ++a) v.emplace_back(r.expert[a], r.weight[a]);
  return v;
}

}  // namespace

// ---- the rules on count vectors ----

TEST(RoundingTargets, EveryRuleOnHandMadeCounts) {
  const Counts c = {142, 128, 0, 200, 64, 65, 255, 1};
  const std::int64_t T = 10000;
  EXPECT_EQ(rounding_targets(c, T, opts(RoundingRule::down, 128)),
            (Counts{128, 128, 0, 128, 0, 0, 128, 0}));
  EXPECT_EQ(rounding_targets(c, T, opts(RoundingRule::up, 128)),
            (Counts{256, 128, 0, 256, 128, 128, 256, 128}));
  // Nearest: a remainder of exactly M/2 (64) rounds down.
  EXPECT_EQ(rounding_targets(c, T, opts(RoundingRule::nearest, 128)),
            (Counts{128, 128, 0, 256, 0, 128, 256, 0}));
  // Balanced: nearest's total moves by +41 <= 64, so it is nearest.
  EXPECT_EQ(rounding_targets(c, T, opts(RoundingRule::balanced, 128)),
            (Counts{128, 128, 0, 256, 0, 128, 256, 0}));
  // Tile 64: 142 -> 128 | 192, 200 -> 192 | 256, 65 -> 64 | 128, 255 -> 192 | 256.
  EXPECT_EQ(rounding_targets(c, T, opts(RoundingRule::nearest, 64)),
            (Counts{128, 128, 0, 192, 64, 64, 256, 0}));
  EXPECT_EQ(rounding_targets(c, T, opts(RoundingRule::down, 256)),
            (Counts{0, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(rounding_targets(c, T, opts(RoundingRule::up, 256)),
            (Counts{256, 256, 0, 256, 256, 256, 256, 256}));
}

TEST(RoundingTargets, BalancedFlipsTheLeastCertainExperts) {
  const std::int64_t T = 10000;
  // Nearest rounds all three up (+186 > 64): the smallest remainder (65, expert 0) goes down.
  EXPECT_EQ(rounding_targets({65, 66, 67}, T, opts(RoundingRule::balanced, 128)), (Counts{0, 128, 128}));
  // Nearest rounds all down (-186 < -64): the largest remainder (63, expert 0) goes up.
  EXPECT_EQ(rounding_targets({63, 62, 61}, T, opts(RoundingRule::balanced, 128)), (Counts{128, 0, 0}));
  // Equal remainders: the lower expert index flips first.
  EXPECT_EQ(rounding_targets({70, 70, 70}, T, opts(RoundingRule::balanced, 128)), (Counts{0, 128, 128}));
  // Several flips: +6 * 60 = 360 -> needs 3 flips down (the three smallest remainders).
  EXPECT_EQ(rounding_targets({68, 70, 66, 69, 67, 71}, T, opts(RoundingRule::balanced, 128)),
            (Counts{0, 128, 0, 128, 0, 128}));
  EXPECT_EQ(rounding_targets({68, 70, 66, 69, 67, 71}, T, opts(RoundingRule::nearest, 128)),
            (Counts{128, 128, 128, 128, 128, 128}));
}

TEST(RoundingTargets, StochasticFollowsTheSpecifiedDraws) {
  const std::int64_t T = 100000;
  Counts c(512);
  for (std::size_t e = 0; e < c.size(); ++e) c[e] = 128 * (e % 3) + static_cast<std::int64_t>(e % 128);
  for (std::uint64_t seed : {0ull, 1ull, 12345ull}) {
    const Counts got = rounding_targets(c, T, opts(RoundingRule::stochastic, 128, seed));
    for (std::size_t e = 0; e < c.size(); ++e) {
      const std::int64_t lo = c[e] / 128 * 128, rem = c[e] - lo;
      const std::int64_t want = rem == 0 ? c[e] : (spec_draw(seed, e) < rem / 128.0 ? lo + 128 : lo);
      ASSERT_EQ(got[e], want) << "seed " << seed << " expert " << e;
    }
    EXPECT_EQ(got, rounding_targets(c, T, opts(RoundingRule::stochastic, 128, seed)));
  }
  // Up with probability rem / M: 4096 experts of remainder 32 go up about a quarter of the time.
  const Counts q(4096, 32);
  const Counts got = rounding_targets(q, T, opts(RoundingRule::stochastic, 128, 7));
  const double up = static_cast<double>(std::count(got.begin(), got.end(), 128)) / q.size();
  EXPECT_NEAR(up, 0.25, 0.03);
  EXPECT_EQ(std::count(got.begin(), got.end(), 0) + std::count(got.begin(), got.end(), 128), 4096);
}

TEST(RoundingTargets, UpIsCappedAtTheTokenCount) {
  EXPECT_EQ(rounding_targets({90, 10, 100}, 100, opts(RoundingRule::up, 128)), (Counts{100, 100, 100}));
  EXPECT_EQ(rounding_targets({90, 10, 100}, 100, opts(RoundingRule::nearest, 128)), (Counts{100, 0, 100}));
  EXPECT_EQ(rounding_targets({90, 10, 100}, 100, opts(RoundingRule::down, 128)), (Counts{0, 0, 0}));
}

TEST(RoundingTargets, ChapterExample) {
  // The chapter's "142 tokens -> 2 tiles; 128 tokens -> 1 tile, 100%" at M = 128.
  const Counts before = {142};
  const Counts after = rounding_targets(before, 1000, opts(RoundingRule::down, 128));
  EXPECT_EQ(after, Counts{128});
  EXPECT_DOUBLE_EQ(tile_utilization(before, 128), 142.0 / 256.0);
  EXPECT_DOUBLE_EQ(tile_utilization(after, 128), 1.0);
  EXPECT_EQ(padded_rows(before, 128), 114);
  EXPECT_EQ(padded_rows(after, 128), 0);
}

// ---- the rules on a hand-made routing ----

namespace {
// T = 6, E = 3, K = 1. Tokens 0, 1, 2 chose expert 0; token 3 expert 1; tokens 4, 5 expert 2.
struct Hand {
  std::vector<float> probs = {.6f, .3f, .1f,  //
                              .5f, .2f, .3f,  //
                              .7f, .2f, .1f,  //
                              .4f, .5f, .1f,  //
                              .4f, .1f, .5f,  //
                              .2f, .1f, .7f};
  Routing topk = Routing::from_topk(6, 3, 1, {0, 0, 0, 1, 2, 2}, {.6f, .5f, .7f, .5f, .5f, .7f});
};
using Row = std::vector<std::pair<int, float>>;
}  // namespace

TEST(RoundingRouting, DownDropsTheLowestRanked) {
  Hand h;
  RoundingMetrics m;
  const Routing r = round_routing(h.topk, h.probs, opts(RoundingRule::down, 2), &m);
  EXPECT_EQ(token_row(r, 0), (Row{{0, .6f}}));
  EXPECT_EQ(token_row(r, 1), Row{});  // lowest of expert 0 (.5 < .6 < .7)
  EXPECT_EQ(token_row(r, 2), (Row{{0, .7f}}));
  EXPECT_EQ(token_row(r, 3), Row{});  // expert 1 had 1 < M
  EXPECT_EQ(token_row(r, 4), (Row{{2, .5f}}));
  EXPECT_EQ(token_row(r, 5), (Row{{2, .7f}}));
  EXPECT_EQ(m.dropped, 2);
  EXPECT_EQ(m.added, 0);
  EXPECT_DOUBLE_EQ(m.tokens_changed, 2.0 / 6.0);
  EXPECT_EQ(m.counts_before, (Counts{3, 1, 2}));
  EXPECT_EQ(m.counts_after, (Counts{2, 0, 2}));
  EXPECT_EQ(m.max_load, 2);
  EXPECT_EQ(m.min_load, 0);
  EXPECT_EQ(m.assignments_before, 6);
  EXPECT_EQ(m.assignments_after, 4);
  EXPECT_DOUBLE_EQ(m.utilization_before, 6.0 / 8.0);
  EXPECT_DOUBLE_EQ(m.utilization_after, 1.0);
  EXPECT_EQ(m.padded_rows_before, 2);
  EXPECT_EQ(m.padded_rows_after, 0);
  // Nearest: both remainders are exactly M/2, which rounds down.
  const Routing n = round_routing(h.topk, h.probs, opts(RoundingRule::nearest, 2));
  EXPECT_EQ(n.token_offsets, r.token_offsets);
  EXPECT_EQ(n.expert, r.expert);
}

TEST(RoundingRouting, UpAddsTheHighestRankedAfterTheKeptOnes) {
  Hand h;
  RoundingMetrics m;
  const Routing r = round_routing(h.topk, h.probs, opts(RoundingRule::up, 2), &m);
  // Expert 0 gains one of tokens 3 (.4), 4 (.4), 5 (.2): the tie goes to the lower token, 3.
  // Expert 1 gains one of tokens 0 (.3), 1 (.2), 2 (.2), 4 (.1), 5 (.1): token 0.
  EXPECT_EQ(token_row(r, 0), (Row{{0, .6f}, {1, .3f}}));
  EXPECT_EQ(token_row(r, 1), (Row{{0, .5f}}));
  EXPECT_EQ(token_row(r, 2), (Row{{0, .7f}}));
  EXPECT_EQ(token_row(r, 3), (Row{{1, .5f}, {0, .4f}}));
  EXPECT_EQ(token_row(r, 4), (Row{{2, .5f}}));
  EXPECT_EQ(token_row(r, 5), (Row{{2, .7f}}));
  EXPECT_EQ(m.added, 2);
  EXPECT_EQ(m.dropped, 0);
  EXPECT_EQ(m.counts_after, (Counts{4, 2, 2}));
}

TEST(RoundingRouting, BalancedKeepsTheTotalWithinHalfATile) {
  Hand h;
  RoundingMetrics m;
  // Nearest would drop 2 (< -M/2 = -1): expert 0 (remainder 1, lower index than expert 1) goes up.
  const Routing r = round_routing(h.topk, h.probs, opts(RoundingRule::balanced, 2), &m);
  EXPECT_EQ(token_row(r, 1), (Row{{0, .5f}}));
  EXPECT_EQ(token_row(r, 3), (Row{{0, .4f}}));  // loses expert 1, gains expert 0
  EXPECT_EQ(m.counts_after, (Counts{4, 0, 2}));
  EXPECT_EQ(m.assignments_after, 6);
  EXPECT_DOUBLE_EQ(m.tokens_changed, 1.0 / 6.0);
}

TEST(RoundingRouting, TiesDropTheHigherTokenIndex) {
  const Routing topk = Routing::from_topk(3, 2, 1, {0, 0, 0}, {.5f, .5f, .5f});
  const std::vector<float> probs = {.5f, .5f, .5f, .5f, .5f, .5f};
  const Routing r = round_routing(topk, probs, opts(RoundingRule::down, 2));
  EXPECT_EQ(r.token_offsets, (std::vector<std::int64_t>{0, 1, 2, 2}));
  // Up: expert 0 gains token... none is left, it is capped at T = 3 -> 3 stays (not a multiple).
  const Routing u = round_routing(topk, probs, opts(RoundingRule::up, 2));
  // Expert 1 had 0: stays 0.
  EXPECT_EQ(u.num_assignments(), 3);
}

// ---- invariants on random routings ----

namespace {
// Router logits with Zipf-like expert popularity: logit = N(0, 1) + log(1 / rank^s).
std::vector<float> skewed_logits(std::int64_t T, int E, double s, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> n(0.f, 1.f);
  std::vector<int> perm(E);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), g);
  std::vector<float> l(static_cast<std::size_t>(T * E));
  for (std::int64_t t = 0; t < T; ++t)
    for (int e = 0; e < E; ++e)
      l[t * E + e] = n(g) - static_cast<float>(s * std::log(1.0 + perm[e]));
  return l;
}
}  // namespace

TEST(RoundingInvariants, RandomRoutings) {
  int cases = 0;
  for (std::int64_t T : {1, 37, 300, 1000})
    for (int E : {8, 32})
      for (int K : {1, 2, 4})
        for (int tile : {16, 64, 128})
          for (double skew : {0.0, 1.0}) {
            RouterConfig rc;
            rc.num_experts = E;
            rc.top_k = K;
            const auto logits = skewed_logits(T, E, skew, 1000 + T * 7 + E + K + tile);
            const Routing topk = route(rc, logits.data(), T);
            const auto probs = router_probabilities(rc, logits.data(), T);
            const RoutingMetadata meta = build_metadata(topk);
            for (auto rule : {RoundingRule::nearest, RoundingRule::up, RoundingRule::down,
                              RoundingRule::stochastic, RoundingRule::balanced}) {
              SCOPED_TRACE(testing::Message() << "T " << T << " E " << E << " K " << K << " tile "
                                              << tile << " skew " << skew << " rule " << to_string(rule));
              const RoundingOptions o = opts(rule, tile, 99);
              RoundingMetrics m;
              const Routing r = round_routing(topk, probs, o, &m);
              ASSERT_NO_THROW(r.validate());  // no duplicate (token, expert), offsets consistent
              const Counts after = expert_loads(r);
              ASSERT_EQ(after, m.counts_after);
              ASSERT_EQ(after, rounding_targets(meta.counts, T, o));
              ASSERT_EQ(m.counts_before, meta.counts);
              std::int64_t total_before = 0, total_after = 0;
              for (int e = 0; e < E; ++e) {
                const std::int64_t f = meta.counts[e], c = after[e];
                total_before += f;
                total_after += c;
                EXPECT_LT(std::abs(c - f), tile) << "expert " << e;         // at most one tile
                EXPECT_TRUE(c % tile == 0 || c == T) << "expert " << e << " count " << c;
                if (rule == RoundingRule::up) { EXPECT_GE(c, f); }
                if (rule == RoundingRule::down) { EXPECT_LE(c, f); }
              }
              if (rule == RoundingRule::balanced) { EXPECT_LE(2 * std::abs(total_after - total_before), tile); }
              EXPECT_EQ(m.assignments_after, total_after);
              EXPECT_EQ(m.assignments_before - m.dropped + m.added, m.assignments_after);

              // Per (token, expert): membership before and after, with weights.
              std::vector<float> w_before(static_cast<std::size_t>(T * E), -1.f), w_after = w_before;
              for (std::int64_t t = 0; t < T; ++t) {
                for (auto [e, w] : token_row(topk, t)) w_before[t * E + e] = w;
                for (auto [e, w] : token_row(r, t)) w_after[t * E + e] = w;
              }
              std::int64_t changed = 0;
              for (std::int64_t t = 0; t < T; ++t) {
                bool ch = false;
                for (int e = 0; e < E; ++e) ch |= (w_before[t * E + e] >= 0) != (w_after[t * E + e] >= 0);
                changed += ch;
              }
              EXPECT_DOUBLE_EQ(m.tokens_changed, static_cast<double>(changed) / T);
              auto above = [&](std::int64_t a, std::int64_t b, int e) {
                const float pa = probs[a * E + e], pb = probs[b * E + e];
                return pa > pb || (pa == pb && a < b);
              };
              for (int e = 0; e < E; ++e) {
                std::vector<std::int64_t> kept, lost, gained, outside;
                for (std::int64_t t = 0; t < T; ++t) {
                  const bool b = w_before[t * E + e] >= 0, a = w_after[t * E + e] >= 0;
                  if (b && a) {
                    kept.push_back(t);
                    EXPECT_EQ(w_after[t * E + e], w_before[t * E + e]);  // top-k weight kept
                  }
                  if (b && !a) lost.push_back(t);
                  if (!b && a) {
                    gained.push_back(t);
                    EXPECT_EQ(w_after[t * E + e], probs[t * E + e]);  // added: router probability
                  }
                  if (!b && !a) outside.push_back(t);
                }
                EXPECT_TRUE(lost.empty() || gained.empty());
                // Every kept top-k assignment ranks above every dropped one ...
                for (auto k : kept)
                  for (auto l : lost) EXPECT_TRUE(above(k, l, e)) << "expert " << e;
                // ... and every added token above every token left out.
                for (auto g2 : gained)
                  for (auto o2 : outside) EXPECT_TRUE(above(g2, o2, e)) << "expert " << e;
              }
              // Within a token: kept in top-k order, then added by probability.
              for (std::int64_t t = 0; t < T; ++t) {
                const auto row = token_row(r, t);
                std::vector<int> kept_order, added_order;
                for (auto [e, w] : row) (w_before[t * E + e] >= 0 ? kept_order : added_order).push_back(e);
                std::vector<int> topk_order;
                for (auto [e, w] : token_row(topk, t))
                  if (w_after[t * E + e] >= 0) topk_order.push_back(e);
                std::vector<int> concat = kept_order;
                concat.insert(concat.end(), added_order.begin(), added_order.end());
                std::vector<int> row_e;
                for (auto [e, w] : row) row_e.push_back(e);
                EXPECT_EQ(row_e, concat);  // kept ones come first
                EXPECT_EQ(kept_order, topk_order);
                for (std::size_t i = 1; i < added_order.size(); ++i) {
                  const float p0 = probs[t * E + added_order[i - 1]], p1 = probs[t * E + added_order[i]];
                  EXPECT_TRUE(p0 > p1 || (p0 == p1 && added_order[i - 1] < added_order[i]));
                }
              }
              // Deterministic.
              const Routing again = round_routing(topk, probs, o);
              EXPECT_EQ(again.expert, r.expert);
              EXPECT_EQ(again.weight, r.weight);
              ++cases;
            }
          }
  EXPECT_EQ(cases, 4 * 2 * 3 * 3 * 2 * 5);
}

// ---- bad input ----

TEST(RoundingErrors, BadInputThrowsNamingTheArgument) {
  Hand h;
  expect_invalid([&] { round_routing(h.topk, h.probs, opts(RoundingRule::nearest, 0)); }, "tile = 0");
  expect_invalid([&] { round_routing(h.topk, h.probs, opts(RoundingRule::nearest, 96)); }, "tile = 96");
  expect_invalid([&] { round_routing(h.topk, h.probs, opts(RoundingRule::nearest, -128)); }, "tile");
  expect_invalid([&] { rounding_targets({1, 2}, 10, opts(RoundingRule::up, 3)); }, "power of two");
  expect_invalid([&] { rounding_targets({11}, 10, opts(RoundingRule::up, 4)); }, "counts[e] = 11");
  std::vector<float> bad = h.probs;
  bad[4] = std::numeric_limits<float>::quiet_NaN();
  expect_invalid([&] { round_routing(h.topk, bad, opts(RoundingRule::nearest, 2)); }, "probs[1, 1]");
  expect_invalid([&] { round_routing(h.topk, std::vector<float>(5), opts(RoundingRule::nearest, 2)); },
                 "probs.size()");
  expect_invalid([] { parse_rounding_rule("sideways"); }, "sideways");
  // K > E and NaN logits are caught by the router before any rounding.
  RouterConfig rc;
  rc.num_experts = 4;
  rc.top_k = 5;
  std::vector<float> logits(8, 0.f);
  expect_invalid([&] { route(rc, logits.data(), 2); }, "top_k = 5");
  rc.top_k = 2;
  logits[6] = std::numeric_limits<float>::quiet_NaN();
  expect_invalid([&] { route(rc, logits.data(), 2); }, "logits[1, 2]");
  // Through the forward: a bad tile is refused before anything runs.
  const MoeConfig& c = preset("tiny");
  const auto w = random_weights(c, DType::f32, 1);
  const auto x = random_tokens(4, c.d_model, DType::f32, 2);
  ForwardOptions fo;
  fo.rounding = opts(RoundingRule::nearest, 100);
  expect_invalid([&] { moe_forward(c, w, x, fo); }, "tile = 100");
}

// ---- the forward on rounded routings ----

TEST(RoundingForward, MatchesReferenceWithFewerAndMoreThanKExperts) {
  for (const char* name : {"tiny", "tiny-deepseek"}) {
    const MoeConfig& c = preset(name);
    const auto w = random_weights(c, DType::f32, 11);
    const auto x = random_tokens(150, c.d_model, DType::f32, 12);
    bool fewer = false, more = false;
    for (auto rule : {RoundingRule::nearest, RoundingRule::up, RoundingRule::down,
                      RoundingRule::stochastic, RoundingRule::balanced}) {
      SCOPED_TRACE(testing::Message() << name << " " << to_string(rule));
      ForwardOptions fo;
      fo.rounding = opts(rule, 16, 5);
      ForwardTrace tr;
      const auto out = moe_forward(c, w, x, fo, &tr);
      ASSERT_TRUE(tr.rounding.has_value());
      EXPECT_EQ(tr.counts, tr.rounding->counts_after);
      for (std::int64_t t = 0; t < 150; ++t) {
        const auto n = tr.routing.token_offsets[t + 1] - tr.routing.token_offsets[t];
        fewer |= n < c.top_k;
        more |= n > c.top_k;
      }
      for (auto cnt : tr.counts) EXPECT_EQ(cnt % 16, 0);
      const auto ref = reference_forward(c, w, x, tr.routing);
      EXPECT_LT(relative_error(out.to_floats(), ref), 1e-5);
      for (auto alg : {Algorithm::sequential, Algorithm::grouped}) {
        fo.algorithm = alg;
        ForwardTrace tr2;
        const auto out2 = moe_forward(c, w, x, fo, &tr2);
        EXPECT_EQ(tr2.routing.expert, tr.routing.expert) << to_string(alg);
        EXPECT_LT(relative_error(out2.to_floats(), ref), 1e-5) << to_string(alg);
      }
    }
    EXPECT_TRUE(fewer) << name;
    EXPECT_TRUE(more) << name;
  }
}

// Every expert below one tile and the rule `down`: rounding drops every assignment, so each
// token gets no routed expert and the output is the shared experts' (tiny-deepseek) or zero.
TEST(RoundingForward, EveryAssignmentDropped) {
  for (const char* name : {"tiny", "tiny-deepseek"}) {
    const MoeConfig& c = preset(name);
    const std::int64_t T = 4;  // T * K assignments, fewer than the tile for every expert
    const auto w = random_weights(c, DType::f32, 21);
    const auto x = random_tokens(T, c.d_model, DType::f32, 22);
    for (auto alg : {Algorithm::sequential, Algorithm::grouped}) {
      SCOPED_TRACE(testing::Message() << name << " " << to_string(alg));
      ForwardOptions fo;
      fo.algorithm = alg;
      fo.rounding = opts(RoundingRule::down, 16, 5);
      ForwardTrace tr;
      const auto out = moe_forward(c, w, x, fo, &tr);
      ASSERT_TRUE(tr.rounding.has_value());
      EXPECT_EQ(tr.routing.num_assignments(), 0);
      for (auto cnt : tr.counts) EXPECT_EQ(cnt, 0);
      const auto ref = reference_forward(c, w, x, tr.routing);
      EXPECT_LT(relative_error(out.to_floats(), ref), 1e-5);
      double norm = 0;
      for (double v : ref) norm += v * v;
      EXPECT_EQ(norm > 0, c.num_shared > 0);  // the shared experts' output, or zero
    }
  }
}

TEST(RoundingForward, OutputDeviation) {
  const MoeConfig& c = preset("tiny");
  const auto w = random_weights(c, DType::f32, 3);
  const auto x = random_tokens(256, c.d_model, DType::f32, 4);
  // Tile 1: every count is a multiple, nothing moves.
  RoundingMetrics m;
  EXPECT_EQ(rounding_output_deviation(c, w, x, opts(RoundingRule::nearest, 1), &m), 0.0);
  EXPECT_EQ(m.dropped + m.added, 0);
  EXPECT_DOUBLE_EQ(m.utilization_after, 1.0);
  const double dev_down = rounding_output_deviation(c, w, x, opts(RoundingRule::down, 32), &m);
  EXPECT_GT(m.dropped, 0);
  EXPECT_GT(dev_down, 0.0);
  EXPECT_LT(dev_down, 1.0);
  // The same number from the two forwards by hand.
  const auto base = moe_forward(c, w, x);
  ForwardOptions fo;
  fo.rounding = opts(RoundingRule::down, 32);
  const auto rounded = moe_forward(c, w, x, fo);
  EXPECT_DOUBLE_EQ(dev_down, relative_error(rounded.to_floats(), base.to_doubles()));
}
