// Tile-aware token rounding on the CPU (SonicMoE, arXiv 2512.14080, Algorithm 4): the reference
// that the GPU kernel reproduces bit for bit. The exact algorithm:
//
// Inputs: top-k routing (T tokens, E experts), probs [T, E] fp32, tile M (a power of two),
// rule, seed.
// 1. Counts. f_e = number of assignments to expert e. lo_e = (f_e / M) * M (integer division),
//    r_e = f_e - lo_e, hi_e = lo_e + M if r_e > 0 else lo_e. up_e = min(hi_e, T): where fewer
//    than hi_e tokens exist, rounding up takes every token.
// 2. Targets c_e (rounding_targets). r_e = 0: c_e = f_e, whatever the rule. Otherwise:
//    up: up_e.  down: lo_e.  nearest: up_e if r_e > M/2 (strictly closer to hi), else lo_e.
//    stochastic: u_e = (splitmix64(seed + (e + 1) * 0x9e3779b97f4a7c15) >> 11) * 2^-53, in
//      double (exact); up_e if u_e < r_e / M (exact, M a power of two), else lo_e. The draw is
//      the (e + 1)-th output of a splitmix64 stream seeded with seed: a counter-based hash of
//      (seed, e), so the draw of an expert does not depend on any other expert.
//    balanced: start from nearest; D = sum_e (c_e - f_e).
//      While D > M/2: among experts rounded up (c_e > f_e), flip the one with the smallest r_e
//        (ties: lower e) to lo_e; D -= up_e - lo_e.
//      While D < -M/2: among experts rounded down (c_e < f_e), flip the one with the largest
//        r_e (ties: lower e) to up_e; D += up_e - lo_e.
//      Each flip moves D by at most M toward zero and never across -M/2 .. M/2, so it ends with
//      |D| <= M/2.
// 3. Rank of token t for expert e: key (probs[t, e] descending, t ascending).
//    c_e < f_e: of the tokens that chose e, the f_e - c_e last in rank order lose e.
//    c_e > f_e: of the tokens that did not choose e, the c_e - f_e first in rank order gain e
//      (so every token that chose e ranks above every token added to it).
//    Experts are independent: each touches only its own (t, e) pairs, hence no duplicates.
// 4. Output, token by token: the kept assignments in their top-k order with their top-k
//    weights, then the added ones by (probs[t, e] descending, e ascending) with weight
//    probs[t, e]. No renormalization.
#include "tilemoe/rounding.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>

namespace tilemoe {

const char* to_string(RoundingRule r) {
  switch (r) {
    case RoundingRule::nearest: return "nearest";
    case RoundingRule::up: return "up";
    case RoundingRule::down: return "down";
    case RoundingRule::stochastic: return "stochastic";
    case RoundingRule::balanced: return "balanced";
  }
  return "?";
}

RoundingRule parse_rounding_rule(std::string_view s) {
  for (auto r : {RoundingRule::nearest, RoundingRule::up, RoundingRule::down, RoundingRule::stochastic,
                 RoundingRule::balanced})
    if (s == to_string(r)) return r;
  throw InvalidArgument(detail::concat("rounding = '", s, "': expected nearest, up, down, stochastic or balanced"));
}

void RoundingOptions::validate() const {
  check_arg(tile >= 1 && (tile & (tile - 1)) == 0, "tile", tile, "a power of two >= 1 (64, 128 or 256)");
}

double tile_utilization(const std::vector<std::int64_t>& counts, int tile) {
  std::int64_t used = 0, computed = 0;
  for (auto c : counts) { used += c; computed += (c + tile - 1) / tile * tile; }
  return computed == 0 ? 1.0 : static_cast<double>(used) / computed;
}

std::int64_t padded_rows(const std::vector<std::int64_t>& counts, int tile) {
  std::int64_t pad = 0;
  for (auto c : counts) pad += (c + tile - 1) / tile * tile - c;
  return pad;
}

namespace {

// splitmix64's output function applied to the stream position: the (e + 1)-th output of a
// splitmix64 generator seeded with seed.
std::uint64_t splitmix64_at(std::uint64_t seed, std::uint64_t e) {
  std::uint64_t z = seed + (e + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Token a ranks above token b for one expert.
inline bool ranks_above(float pa, std::int64_t ta, float pb, std::int64_t tb) {
  return pa > pb || (pa == pb && ta < tb);
}

}  // namespace

std::vector<std::int64_t> rounding_targets(const std::vector<std::int64_t>& counts,
                                           std::int64_t num_tokens, const RoundingOptions& opt) {
  opt.validate();
  check_arg(num_tokens >= 0, "num_tokens", num_tokens, ">= 0");
  const std::int64_t M = opt.tile;
  const std::size_t E = counts.size();
  std::vector<std::int64_t> lo(E), up(E), rem(E), c(E);
  for (std::size_t e = 0; e < E; ++e) {
    const std::int64_t f = counts[e];
    if (f < 0 || f > num_tokens)
      check_arg(false, "counts[e]", f,
                detail::concat("0 <= count <= num_tokens (", num_tokens, ") for expert ", e));
    lo[e] = f / M * M;
    rem[e] = f - lo[e];
    up[e] = rem[e] > 0 ? std::min(lo[e] + M, num_tokens) : lo[e];
  }
  for (std::size_t e = 0; e < E; ++e) {
    if (rem[e] == 0) { c[e] = counts[e]; continue; }
    switch (opt.rule) {
      case RoundingRule::up: c[e] = up[e]; break;
      case RoundingRule::down: c[e] = lo[e]; break;
      case RoundingRule::nearest:
      case RoundingRule::balanced: c[e] = 2 * rem[e] > M ? up[e] : lo[e]; break;
      case RoundingRule::stochastic: {
        const double u = static_cast<double>(splitmix64_at(opt.seed, e) >> 11) * 0x1.0p-53;
        c[e] = u < static_cast<double>(rem[e]) / static_cast<double>(M) ? up[e] : lo[e];
        break;
      }
    }
  }
  if (opt.rule == RoundingRule::balanced) {
    std::int64_t D = 0;
    for (std::size_t e = 0; e < E; ++e) D += c[e] - counts[e];
    // Flip candidates in the order the rule names; each is flipped at most once.
    std::vector<std::size_t> order(E);
    std::iota(order.begin(), order.end(), std::size_t{0});
    if (2 * D > M) {
      std::stable_sort(order.begin(), order.end(),
                       [&](std::size_t a, std::size_t b) { return rem[a] < rem[b]; });
      for (std::size_t i = 0; i < E && 2 * D > M; ++i) {
        const std::size_t e = order[i];
        if (c[e] > counts[e]) { D -= c[e] - lo[e]; c[e] = lo[e]; }
      }
    } else if (2 * D < -M) {
      std::stable_sort(order.begin(), order.end(),
                       [&](std::size_t a, std::size_t b) { return rem[a] > rem[b]; });
      for (std::size_t i = 0; i < E && 2 * D < -M; ++i) {
        const std::size_t e = order[i];
        if (c[e] < counts[e]) { D += up[e] - c[e]; c[e] = up[e]; }
      }
    }
  }
  return c;
}

Routing round_routing(const Routing& topk, const std::vector<float>& probs,
                      const RoundingOptions& opt, RoundingMetrics* metrics) {
  opt.validate();
  topk.validate();
  const std::int64_t T = topk.num_tokens;
  const int E = topk.num_experts;
  check_arg(static_cast<std::int64_t>(probs.size()) == T * E, "probs.size()", probs.size(),
            detail::concat("num_tokens * num_experts = ", T * E));
  for (std::size_t i = 0; i < probs.size(); ++i)
    if (!std::isfinite(probs[i]))
      throw InvalidArgument(detail::concat("probs[", i / E, ", ", i % E, "] = ", probs[i],
                                           ": expected finite router probabilities"));

  const RoutingMetadata meta = build_metadata(topk);
  const std::vector<std::int64_t> target = rounding_targets(meta.counts, T, opt);
  const std::int64_t A = topk.num_assignments();

  std::vector<char> dropped(static_cast<std::size_t>(A), 0);
  std::vector<std::vector<std::int32_t>> added(static_cast<std::size_t>(T));  // experts per token
  std::vector<char> chose(static_cast<std::size_t>(T), 0);
  std::vector<std::int64_t> cand;  // sorted positions (drop) or tokens (add)
  std::int64_t n_dropped = 0, n_added = 0;

  for (int e = 0; e < E; ++e) {
    const std::int64_t f = meta.counts[e], c = target[e];
    const std::int64_t b = meta.offsets[e];
    auto prob = [&](std::int64_t t) { return probs[static_cast<std::size_t>(t * E + e)]; };
    if (c < f) {
      // Rank e's chosen tokens; the last f - c lose e.
      cand.resize(static_cast<std::size_t>(f));
      std::iota(cand.begin(), cand.end(), b);
      const auto cut = cand.begin() + c;
      std::nth_element(cand.begin(), cut, cand.end(), [&](std::int64_t x, std::int64_t y) {
        const std::int64_t tx = meta.sorted_token[x], ty = meta.sorted_token[y];
        return ranks_above(prob(tx), tx, prob(ty), ty);
      });
      for (auto it = cut; it != cand.end(); ++it) dropped[meta.sorted[*it]] = 1;
      n_dropped += f - c;
    } else if (c > f) {
      for (std::int64_t p = b; p < b + f; ++p) chose[meta.sorted_token[p]] = 1;
      cand.clear();
      for (std::int64_t t = 0; t < T; ++t)
        if (!chose[t]) cand.push_back(t);
      for (std::int64_t p = b; p < b + f; ++p) chose[meta.sorted_token[p]] = 0;
      const auto cut = cand.begin() + (c - f);
      std::nth_element(cand.begin(), cut, cand.end(), [&](std::int64_t x, std::int64_t y) {
        return ranks_above(prob(x), x, prob(y), y);
      });
      for (auto it = cand.begin(); it != cut; ++it) added[*it].push_back(e);
      n_added += c - f;
    }
  }

  Routing out;
  out.num_tokens = T;
  out.num_experts = E;
  out.token_offsets.resize(static_cast<std::size_t>(T + 1));
  out.expert.reserve(static_cast<std::size_t>(A - n_dropped + n_added));
  out.weight.reserve(static_cast<std::size_t>(A - n_dropped + n_added));
  std::int64_t changed = 0;
  out.token_offsets[0] = 0;
  for (std::int64_t t = 0; t < T; ++t) {
    bool touched = false;
    for (std::int64_t a = topk.token_offsets[t]; a < topk.token_offsets[t + 1]; ++a) {
      if (dropped[a]) { touched = true; continue; }
      out.expert.push_back(topk.expert[a]);
      out.weight.push_back(topk.weight[a]);
    }
    auto& add = added[t];
    if (!add.empty()) {
      touched = true;
      const float* pt = probs.data() + t * E;
      std::sort(add.begin(), add.end(), [pt](std::int32_t x, std::int32_t y) {
        return pt[x] > pt[y] || (pt[x] == pt[y] && x < y);
      });
      for (std::int32_t e : add) {
        out.expert.push_back(e);
        out.weight.push_back(pt[e]);
      }
    }
    changed += touched ? 1 : 0;
    out.token_offsets[t + 1] = out.num_assignments();
  }

  if (metrics) {
    RoundingMetrics& m = *metrics;
    m = RoundingMetrics{};
    m.counts_before = meta.counts;
    m.counts_after = target;
    m.utilization_before = tile_utilization(m.counts_before, opt.tile);
    m.utilization_after = tile_utilization(m.counts_after, opt.tile);
    m.padded_rows_before = padded_rows(m.counts_before, opt.tile);
    m.padded_rows_after = padded_rows(m.counts_after, opt.tile);
    m.dropped = n_dropped;
    m.added = n_added;
    m.tokens_changed = T == 0 ? 0.0 : static_cast<double>(changed) / static_cast<double>(T);
    m.max_load = E == 0 ? 0 : *std::max_element(target.begin(), target.end());
    m.min_load = E == 0 ? 0 : *std::min_element(target.begin(), target.end());
    m.assignments_before = A;
    m.assignments_after = out.num_assignments();
  }
  return out;
}

}  // namespace tilemoe
