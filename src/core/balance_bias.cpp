// Expert loads and DeepSeek-V3's auxiliary-loss-free balancing: a per-expert bias, used only to
// choose experts, nudged by a fixed step toward the mean load after every training step.
#include <algorithm>
#include <cmath>
#include <limits>

#include "tilemoe/balance.hpp"

namespace tilemoe {

std::vector<std::int64_t> expert_loads(const Routing& r) {
  std::vector<std::int64_t> loads(static_cast<std::size_t>(r.num_experts), 0);
  for (std::int32_t e : r.expert) {
    if (e < 0 || e >= r.num_experts)  // build the message only on failure: this loop is hot
      check_arg(false, "routing.expert", e, detail::concat("0 <= expert < ", r.num_experts));
    ++loads[e];
  }
  return loads;
}

double load_spread(const std::vector<std::int64_t>& loads) {
  check_arg(!loads.empty(), "loads.size()", 0, ">= 1");
  const auto [mn, mx] = std::minmax_element(loads.begin(), loads.end());
  if (*mx == 0) return 1.0;
  if (*mn == 0) return std::numeric_limits<double>::infinity();
  return static_cast<double>(*mx) / static_cast<double>(*mn);
}

void update_expert_bias(std::vector<float>& bias, const std::vector<std::int64_t>& loads, float gamma) {
  check_arg(bias.size() == loads.size(), "bias.size()", bias.size(),
            detail::concat("loads.size() = ", loads.size()));
  check_arg(std::isfinite(gamma) && gamma >= 0, "gamma", gamma, "a finite step >= 0");
  if (loads.empty()) return;
  // Compare load * E with the total rather than load with total / E: exact in integers.
  std::int64_t total = 0;
  for (auto l : loads) total += l;
  const std::int64_t E = static_cast<std::int64_t>(loads.size());
  for (std::size_t e = 0; e < loads.size(); ++e) {
    const std::int64_t scaled = loads[e] * E;
    if (scaled < total) bias[e] += gamma;
    else if (scaled > total) bias[e] -= gamma;
  }
}

}  // namespace tilemoe
