// Switch's expert capacity and token dropping: each expert takes at most `capacity` assignments,
// first come (in token order) first served; the rest are dropped.
#include <cmath>

#include "tilemoe/balance.hpp"

namespace tilemoe {

std::int64_t expert_capacity(std::int64_t A, int E, double cf) {
  check_arg(A >= 0, "num_assignments", A, ">= 0");
  check_arg(E >= 1, "num_experts", E, ">= 1");
  check_arg(std::isfinite(cf) && cf > 0, "capacity_factor", cf, "a finite factor > 0");
  return static_cast<std::int64_t>(std::ceil(cf * static_cast<double>(A) / static_cast<double>(E)));
}

Routing apply_capacity(const Routing& r, double cf, std::int64_t* dropped) {
  r.validate();
  const std::int64_t cap = expert_capacity(r.num_assignments(), r.num_experts, cf);
  std::vector<std::int64_t> load(static_cast<std::size_t>(r.num_experts), 0);
  Routing out;
  out.num_tokens = r.num_tokens;
  out.num_experts = r.num_experts;
  out.token_offsets.assign(static_cast<std::size_t>(r.num_tokens + 1), 0);
  for (std::int64_t t = 0; t < r.num_tokens; ++t) {
    for (std::int64_t a = r.token_offsets[t]; a < r.token_offsets[t + 1]; ++a) {
      const int e = r.expert[a];
      if (load[e] >= cap) continue;
      ++load[e];
      out.expert.push_back(e);
      out.weight.push_back(r.weight[a]);
    }
    out.token_offsets[t + 1] = out.num_assignments();
  }
  if (dropped) *dropped = r.num_assignments() - out.num_assignments();
  return out;
}

}  // namespace tilemoe
