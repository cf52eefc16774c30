// Exercise 02: load balancing. What you implement (load_balancing.cpp) and the small training
// run that uses it (train.cpp, given). See README.md.
#pragma once
#include <cstdint>
#include <vector>

namespace ex02 {

// ---- Part 1 and 2: yours (load_balancing.cpp) ----

// Switch / GShard auxiliary loss of a softmax router with top-k selection, on logits [T, E]
// (row-major): L = alpha * E * sum_i f_i * P_i, where f_i is the share of the T * K top-k
// assignments that went to expert i (top-k of the logits, ties to the lower index) and P_i the
// mean over tokens of softmax(logits_t)_i. f carries no gradient. Returns L and ADDS dL/dlogits
// into grad (same size as logits).
double aux_loss(const std::vector<double>& logits, int T, int E, int K, double alpha,
                std::vector<double>& grad);

// DeepSeek-V3's auxiliary-loss-free balancing: bias[e] += gamma * sign(mean_load - loads[e])
// (no move when loads[e] equals the mean).
void update_bias(std::vector<double>& bias, const std::vector<std::int64_t>& loads, double gamma);

// ---- The training run (train.cpp, given) ----

enum class Balancing { none, aux_loss, bias };

struct TrainConfig {
  int d = 16;           // token size
  int experts = 8;      // E
  int top_k = 2;        // K
  int clusters = 8;     // classes of the task = clusters of the synthetic tokens
  int batch = 256;      // tokens per step
  int steps = 400;
  double lr = 0.5;      // plain SGD on router and experts
  Balancing balancing = Balancing::none;
  double alpha = 3.0;   // aux-loss coefficient (Switch uses 1e-2; see README)
  double gamma = 0.05;  // bias step (DeepSeek-V3 uses 1e-3 on sigmoid scores)
  std::uint64_t seed = 1;
};

struct TrainResult {
  double task_loss_first = 0;   // cross-entropy on the evaluation tokens before training
  double task_loss_last = 0;    // ... and after
  std::vector<std::int64_t> loads;  // top-k assignments per expert on the evaluation tokens
  double spread = 0;            // max load / min load (inf when an expert gets none)
};

// Trains a tiny MoE classifier: router W_r [E, d], expert e a linear classifier [C, d] + [C];
// output = sum over the token's top-k experts of p_e * expert_e(x); cross-entropy against the
// token's cluster. Deterministic for a seed.
TrainResult train(const TrainConfig& cfg);

}  // namespace ex02
