// Routing metadata on the CPU: a stable counting sort of the assignments by expert.
#include "tilemoe/routing.hpp"

namespace tilemoe {

RoutingMetadata build_metadata(const Routing& r) {
  const int E = r.num_experts;
  const std::int64_t A = r.num_assignments();
  RoutingMetadata m;
  m.counts.assign(static_cast<std::size_t>(E), 0);
  for (std::int64_t a = 0; a < A; ++a) {
    const int e = r.expert[a];
    if (e < 0 || e >= E) check_arg(false, "routing.expert", e, detail::concat("0 <= expert < ", E));
    ++m.counts[e];
  }
  m.offsets.assign(static_cast<std::size_t>(E) + 1, 0);
  for (int e = 0; e < E; ++e) m.offsets[e + 1] = m.offsets[e] + m.counts[e];
  m.sorted.resize(static_cast<std::size_t>(A));
  m.slot.resize(static_cast<std::size_t>(A));
  m.sorted_token.resize(static_cast<std::size_t>(A));
  std::vector<std::int64_t> next(m.offsets.begin(), m.offsets.end() - 1);
  for (std::int64_t t = 0; t < r.num_tokens; ++t) {
    for (std::int64_t a = r.token_offsets[t]; a < r.token_offsets[t + 1]; ++a) {
      const std::int64_t pos = next[r.expert[a]]++;
      m.sorted[pos] = a;
      m.slot[a] = pos;
      m.sorted_token[pos] = t;
    }
  }
  return m;
}

}  // namespace tilemoe
