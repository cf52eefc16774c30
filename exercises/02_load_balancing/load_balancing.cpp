// Exercise 02: load balancing. Fill in the two TODOs; `ctest -R Exercise02` (or the test binary
// built with -DEXERCISE02_SOURCE=<this file>) tells you when you are done. README.md explains.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "load_balancing.hpp"

namespace ex02 {

double aux_loss(const std::vector<double>& logits, int T, int E, int K, double alpha,
                std::vector<double>& grad) {
  // TODO(1): the Switch / GShard auxiliary loss L = alpha * E * sum_i f_i * P_i.
  //   - p_t = softmax(logits_t) for every token t (subtract the row max before exp);
  //   - P_i = mean over tokens of p_ti;
  //   - f_i = (number of tokens whose top-K logits include i) / (T * K); ties go to the lower
  //     expert index. f is a count: treat it as a constant when differentiating.
  //   - ADD dL/dlogits into grad. Hint: dP_i / dlogit_tj = p_ti * (delta_ij - p_tj) / T.
  (void)logits, (void)T, (void)E, (void)K, (void)alpha, (void)grad;
  return 0.0;
}

void update_bias(std::vector<double>& bias, const std::vector<std::int64_t>& loads, double gamma) {
  // TODO(2): DeepSeek-V3's loss-free balancing: move every expert's bias by gamma toward
  //   balance, bias[e] += gamma * sign(mean_load - loads[e]); no move when equal to the mean.
  (void)bias, (void)loads, (void)gamma;
}

}  // namespace ex02
