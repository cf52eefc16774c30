// Load balancing for MoE routers: the losses a training run adds to keep experts evenly used,
// DeepSeek-V3's loss-free bias, and Switch's capacity limit. CPU, float64 where a gradient is
// returned (so that it can be checked against finite differences). See docs/load_balancing.md.
#pragma once
#include <cstdint>
#include <vector>

#include "tilemoe/routing.hpp"

namespace tilemoe {

// A loss value and its gradient with respect to the router logits, [T, E] row-major.
struct LossAndGrad {
  double value = 0;
  std::vector<double> grad;
};

// Switch / GShard auxiliary loss for a softmax router with top-k selection, on logits [T, E]:
//   L = alpha * E * sum_i f_i * P_i,
//   f_i = (assignments to expert i) / (T * K)   (top-k of the logits, ties to the lower index),
//   P_i = mean over tokens of softmax(logits_t)_i.
// f is a count and carries no gradient (as in Switch), so
//   dL/dlogit[t, j] = alpha * E / T * p[t, j] * (f_j - sum_i f_i p[t, i]).
// L = alpha at perfect balance (f_i = P_i = 1/E) and up to alpha * E when one expert takes all.
// Throws InvalidArgument on bad sizes, K outside 1..E, non-finite logits or alpha.
LossAndGrad switch_aux_loss(const std::vector<double>& logits, std::int64_t num_tokens,
                            int num_experts, int top_k, double alpha = 1e-2);

// Router z-loss (ST-MoE): L = beta * mean_t logsumexp(logits_t)^2; it keeps logits small.
//   dL/dlogit[t, j] = beta * 2 / T * lse_t * softmax(logits_t)_j.
LossAndGrad router_z_loss(const std::vector<double>& logits, std::int64_t num_tokens,
                          int num_experts, double beta = 1e-3);

// Assignments per expert of a routing, [E].
std::vector<std::int64_t> expert_loads(const Routing& r);
// max load / min load (infinity when some expert has none and another has some; 1 when all 0).
double load_spread(const std::vector<std::int64_t>& loads);

// DeepSeek-V3's auxiliary-loss-free balancing: after each step, every expert's correction bias
// moves by gamma toward balance: bias[e] += gamma * sign(mean_load - load[e]) (0 when equal).
// The bias only chooses experts (route()'s bias argument); it never weighs them.
void update_expert_bias(std::vector<float>& bias, const std::vector<std::int64_t>& loads,
                        float gamma = 1e-3f);

// Switch's expert capacity: ceil(capacity_factor * assignments / E), computed in double.
std::int64_t expert_capacity(std::int64_t num_assignments, int num_experts, double capacity_factor);

// Token dropping at a capacity factor: assignments are visited in token order (then each token's
// own order) and an expert keeps the first `capacity` it receives, capacity =
// expert_capacity(r.num_assignments(), E, capacity_factor) (= ceil(T * K / E * cf) for top-k).
// Kept assignments keep their weights and order; a token may lose all its experts (its routed
// output is then zero). dropped, if given, receives the number of assignments dropped.
Routing apply_capacity(const Routing& r, double capacity_factor, std::int64_t* dropped = nullptr);

}  // namespace tilemoe
