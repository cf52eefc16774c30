// Exercise 01 (your file): fill in each TODO. Build and test:
//   cmake -S . -B build -DEXERCISE01_SOURCE=$PWD/exercises/01_moe_forward/moe_forward.cpp
//   cmake --build build --target exercise01_test && ./build/exercises/01_moe_forward/exercise01_test
#include "moe_forward.hpp"

#include <cmath>
#include <stdexcept>

namespace exercise01 {

std::vector<float> softmax(const std::vector<float>& v) {
  // TODO: subtract the maximum before exp (stability), then divide by the sum.
  (void)v;
  throw std::logic_error("TODO: softmax");
}

std::vector<int> top_k(const std::vector<float>& scores, int k) {
  // TODO: return the indices of the k largest scores, largest first, lower index first on ties.
  (void)scores;
  (void)k;
  throw std::logic_error("TODO: top_k");
}

std::vector<float> expert_ffn(const SimpleMoe& m, int e, const float* x) {
  // TODO: gate_j = row j of w_gate[e] . x, up_j = row j of w_up[e] . x  (j < n)
  //       a_j = silu(gate_j) * up_j;  out_i = row i of w_down[e] . a      (i < d)
  (void)m;
  (void)e;
  (void)x;
  throw std::logic_error("TODO: expert_ffn");
}

std::vector<float> moe_forward(const SimpleMoe& m, const std::vector<float>& x, int T) {
  // TODO: for each token: logits (router . x_t), softmax, top_k, renormalize the k weights,
  //       and sum weight * expert_ffn over the chosen experts.
  (void)m;
  (void)x;
  (void)T;
  throw std::logic_error("TODO: moe_forward");
}

}  // namespace exercise01
