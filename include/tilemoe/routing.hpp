// Routing: which experts each token goes to, with what weight; and the metadata that groups the
// assignments by expert for the expert GEMMs.
#pragma once
#include <cstdint>
#include <vector>

#include "tilemoe/config.hpp"
#include "tilemoe/tensor.hpp"

namespace tilemoe {

// Assignments grouped by token: token t owns assignments token_offsets[t] .. token_offsets[t+1].
// Plain top-k gives exactly K per token (in rank order, best first); token rounding can leave a
// token with fewer or more.
struct Routing {
  std::int64_t num_tokens = 0;
  int num_experts = 0;
  std::vector<std::int64_t> token_offsets;  // [T + 1]
  std::vector<std::int32_t> expert;         // [A]
  std::vector<float> weight;                // [A]

  std::int64_t num_assignments() const { return static_cast<std::int64_t>(expert.size()); }
  // Uniform-K routing from [T, K] arrays.
  static Routing from_topk(std::int64_t T, int E, int K, std::vector<std::int32_t> ids,
                           std::vector<float> weights);
  // Throws InvalidArgument unless offsets are monotone, experts in range, weights finite and no
  // token has the same expert twice.
  void validate() const;
};

// Router scores of every (token, expert), [T, E] row-major: softmax of the logits, or the
// sigmoid for sigmoid_group_topk. Token rounding ranks candidates by these.
std::vector<float> router_probabilities(const RouterConfig& cfg, const float* logits,
                                        std::int64_t T);

// Routes T tokens from logits [T, E] (fp32). bias [E] is DeepSeek-V3's correction bias (may be
// null). Throws InvalidArgument on bad sizes or non-finite logits.
Routing route(const RouterConfig& cfg, const float* logits, std::int64_t T,
              const float* bias = nullptr);
Routing route(const RouterConfig& cfg, const Tensor& logits, const Tensor& bias = Tensor());

// The float64 router that route() is tested against: same rules, double arithmetic.
Routing route_reference(const RouterConfig& cfg, const double* logits, std::int64_t T,
                        const double* bias = nullptr);

// Assignments sorted by expert (stable: by token within an expert).
struct RoutingMetadata {
  std::vector<std::int64_t> counts;   // [E] assignments per expert
  std::vector<std::int64_t> offsets;  // [E + 1] exclusive scan of counts
  std::vector<std::int64_t> sorted;   // [A] sorted position -> assignment index
  std::vector<std::int64_t> slot;     // [A] assignment index -> sorted position (inverse)
  std::vector<std::int64_t> sorted_token;  // [A] sorted position -> token id
};
RoutingMetadata build_metadata(const Routing& r);

}  // namespace tilemoe
