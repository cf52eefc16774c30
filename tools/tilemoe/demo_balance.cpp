// The demo's load-balancing item: DeepSeek-V3's auxiliary-loss-free balancing on a router whose
// tokens favour a few experts (Zipf-like popularity added to the logits). The per-expert bias
// moves by gamma toward the mean load after each batch; the spread is the busiest expert's load
// over the least busy one's, measured on a fresh batch after the last step.
#include <cmath>
#include <cstdio>

#include "demo_checks.hpp"
#include "tilemoe/balance.hpp"

namespace tilemoe::tool {

CheckResult check_load_balancing(const DemoSetup& s) {
  CheckResult r{"Load balancing keeps expert usage within 2x range"};
  RouterConfig rc = s.cfg.router_config();
  rc.kind = RouterKind::sigmoid_group_topk;  // the router that the bias balancing belongs to
  rc.n_groups = 1;
  rc.topk_groups = 1;
  const int E = rc.num_experts, steps = 200;
  const float gamma = 0.01f;
  const std::int64_t T = std::min<std::int64_t>(s.tokens, 2048);
  MoeWeights w = random_weights(s.cfg, DType::f32, s.seed);  // CPU copy: balancing is routing only
  auto batch_loads = [&](std::uint64_t seed, const std::vector<float>& bias) {
    Tensor x = random_tokens(T, s.cfg.d_model, DType::f32, seed);
    Tensor logits = router_logits(w, x);
    float* l = logits.data<float>();
    for (std::int64_t t = 0; t < T; ++t)
      for (int e = 0; e < E; ++e) l[t * E + e] += -0.6f * std::log(1.0f + static_cast<float>(e));
    return expert_loads(route(rc, l, T, bias.data()));
  };
  std::vector<float> bias(static_cast<std::size_t>(E), 0.0f);
  const double before = load_spread(batch_loads(s.seed + 1000, bias));
  for (int i = 0; i < steps; ++i) update_expert_bias(bias, batch_loads(s.seed + 2000 + i, bias), gamma);
  const double after = load_spread(batch_loads(s.seed + 1000, bias));
  r.value = after;
  r.status = after <= 2.0 ? CheckStatus::pass : CheckStatus::fail;
  char buf[200];
  std::snprintf(buf, sizeof buf, "max/min load %.1fx -> %.2fx (loss-free bias, %d steps of %lld tokens)",
                before, after, steps, static_cast<long long>(T));
  r.detail = buf;
  return r;
}

}  // namespace tilemoe::tool
