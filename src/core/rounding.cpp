// PLACEHOLDER (being written in this session): tile-aware token rounding.
#include "tilemoe/rounding.hpp"

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
Routing round_routing(const Routing&, const std::vector<float>&, const RoundingOptions&, RoundingMetrics*) {
  throw Error("round_routing: not built yet");
}
}  // namespace tilemoe
