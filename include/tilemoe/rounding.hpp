// Tile-aware token rounding (SonicMoE, arXiv 2512.14080, Algorithm 4): after top-k routing,
// each expert's token count is moved to a multiple of the GEMM tile size M.
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "tilemoe/routing.hpp"

namespace tilemoe {

enum class RoundingRule { nearest, up, down, stochastic, balanced };
const char* to_string(RoundingRule r);
RoundingRule parse_rounding_rule(std::string_view s);

struct RoundingOptions {
  int tile = 128;                      // M: 64, 128 or 256 (any power of two >= 1 accepted)
  RoundingRule rule = RoundingRule::nearest;
  std::uint64_t seed = 0;              // stochastic rule
  void validate() const;
};

struct RoundingMetrics {
  double utilization_before = 0;       // useful rows / rows computed in whole tiles, top-k
  double utilization_after = 0;        // the same after rounding
  std::int64_t padded_rows_before = 0;
  std::int64_t padded_rows_after = 0;
  std::int64_t dropped = 0;            // assignments removed
  std::int64_t added = 0;              // assignments added
  double tokens_changed = 0;           // share of tokens whose expert set changed
  std::int64_t max_load = 0;           // max / min assignments per expert after rounding
  std::int64_t min_load = 0;
};

// Useful rows over rows computed when each count is padded up to whole tiles (1 when empty).
double tile_utilization(const std::vector<std::int64_t>& counts, int tile);

// Rounds topk (from route()) using probs [T, E] (router_probabilities()). Deterministic for a
// given seed. The result's weights: see the definition in rounding.cpp.
Routing round_routing(const Routing& topk, const std::vector<float>& probs,
                      const RoundingOptions& opt, RoundingMetrics* metrics = nullptr);

}  // namespace tilemoe
