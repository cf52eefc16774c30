// Exercise 01: a MoE layer forward pass in plain C++, written by hand.
// Implement the four functions in moe_forward.cpp; the test compares them with tilemoe.
#pragma once
#include <vector>

namespace exercise01 {

// A softmax-routed MoE layer with SwiGLU experts, all in fp32, row-major.
struct SimpleMoe {
  int d = 0;                    // hidden size
  int n = 0;                    // expert intermediate size
  int num_experts = 0;          // E
  int top_k = 0;                // K
  std::vector<float> router;    // [E, d]
  std::vector<float> w_gate;    // [E, n, d]
  std::vector<float> w_up;      // [E, n, d]
  std::vector<float> w_down;    // [E, d, n]
};

// Numerically stable softmax of v.
std::vector<float> softmax(const std::vector<float>& v);

// Indices of the k largest scores, largest first; equal scores: the lower index first.
std::vector<int> top_k(const std::vector<float>& scores, int k);

// Expert e on one token x [d]: down . (silu(gate . x) * (up . x)), silu(z) = z / (1 + exp(-z)).
std::vector<float> expert_ffn(const SimpleMoe& m, int e, const float* x);

// The layer on x [T, d]: logits = router . x_t; p = softmax(logits); the top-k experts of p;
// weights = their p divided by the sum of the k; out_t = sum_k weight_k * expert_k(x_t).
std::vector<float> moe_forward(const SimpleMoe& m, const std::vector<float>& x, int T);

}  // namespace exercise01
