// Tile-aware token rounding (SonicMoE, arXiv 2512.14080, Algorithm 4): after top-k routing,
// each expert's token count is moved to a multiple of the GEMM tile size M, so that no tile of
// the grouped GEMM is computed half empty. The exact algorithm (ranking keys, tie breaks, the
// stochastic draws, the balanced rule) is written at the top of src/core/rounding.cpp and in
// docs/token_rounding.md; a GPU implementation reproduces it bit for bit.
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "tilemoe/routing.hpp"

namespace tilemoe {

struct MoeConfig;
struct MoeWeights;
class Tensor;

enum class RoundingRule {
  nearest,     // to the nearer tile multiple; a remainder of exactly M/2 rounds down (default)
  up,          // always pad to the next multiple
  down,        // always drop to the previous multiple: the chapter's (count // M) * M
  stochastic,  // up with probability (f_e - floor) / M, one seeded draw per expert
  balanced,    // nearest, then flips the least-certain experts until the total number of
               // assignments is within M/2 of the top-k total
};
const char* to_string(RoundingRule r);
RoundingRule parse_rounding_rule(std::string_view s);

struct RoundingOptions {
  int tile = 128;                      // M: 64, 128 or 256 (any power of two >= 1 accepted)
  RoundingRule rule = RoundingRule::nearest;
  std::uint64_t seed = 0;              // stochastic rule
  void validate() const;               // throws InvalidArgument unless tile is a power of two
};

struct RoundingMetrics {
  double utilization_before = 0;       // useful rows / rows computed in whole tiles, top-k
  double utilization_after = 0;        // the same after rounding
  std::int64_t padded_rows_before = 0; // rows computed in whole tiles minus useful rows
  std::int64_t padded_rows_after = 0;
  std::int64_t dropped = 0;            // assignments removed
  std::int64_t added = 0;              // assignments added
  double tokens_changed = 0;           // share of tokens whose expert set changed
  std::int64_t max_load = 0;           // max / min assignments per expert after rounding
  std::int64_t min_load = 0;
  std::int64_t assignments_before = 0; // total assignments, top-k (T * K)
  std::int64_t assignments_after = 0;  // ... and after rounding
  std::vector<std::int64_t> counts_before;  // [E] per-expert counts, top-k
  std::vector<std::int64_t> counts_after;   // [E] after rounding
};

// Useful rows over rows computed when each count is padded up to whole tiles (1 when empty).
double tile_utilization(const std::vector<std::int64_t>& counts, int tile);
// Rows computed in whole tiles minus useful rows: sum_e ceil(c_e / M) * M - c_e.
std::int64_t padded_rows(const std::vector<std::int64_t>& counts, int tile);

// The per-expert counts the rule rounds counts (top-k counts, [E]) to, for T tokens: the first
// half of round_routing, on counts alone. Each target is floor_M(c) or min(ceil_M(c), T), where
// floor_M / ceil_M are the tile multiples around c (an exact multiple stays as it is).
std::vector<std::int64_t> rounding_targets(const std::vector<std::int64_t>& counts,
                                           std::int64_t num_tokens, const RoundingOptions& opt);

// Rounds topk (from route()) using probs [T, E] (router_probabilities()). Deterministic for a
// given seed. Per expert e with top-k count f_e and target c_e (rounding_targets):
//   c_e < f_e: drops e's f_e - c_e lowest-ranked assignments;
//   c_e > f_e: adds e to the c_e - f_e highest-ranked tokens that did not choose e;
// rank = probs[t, e] descending, then token index ascending.
// Weights (every rule alike): a kept assignment keeps its top-k weight; an added one gets the
// token's router probability probs[t, e], as is. Nothing is renormalized after rounding: a
// token that loses an expert keeps its other weights (their sum falls), a token that gains one
// sums one more term. (Routers that renormalize or scale their top-k weights, e.g. DeepSeek-V3's
// x 2.5, thus give added experts a weight on the raw probability scale.)
// Order within a token: its kept assignments in their top-k order, then its added ones by
// probs[t, e] descending, lower expert index first on ties. A token may end with fewer or
// more than K assignments, or none.
// Throws InvalidArgument on a bad tile, an invalid routing, probs of the wrong size or
// non-finite probs.
Routing round_routing(const Routing& topk, const std::vector<float>& probs,
                      const RoundingOptions& opt, RoundingMetrics* metrics = nullptr);

// Relative deviation ||out_rounded - out_topk|| / ||out_topk|| of the layer output (shared
// experts included) when rounding with opt, against plain top-k routing; both forwards run
// through moe_forward on x (CPU or GPU tensors). metrics, if given, receives the rounding's.
double rounding_output_deviation(const MoeConfig& cfg, const MoeWeights& w, const Tensor& x,
                                 const RoundingOptions& opt, RoundingMetrics* metrics = nullptr);

}  // namespace tilemoe
