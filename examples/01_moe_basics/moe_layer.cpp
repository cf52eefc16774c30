// Step 1 of the chapter: the basic MoE layer, router -> top-k -> experts -> weighted sum,
// one stage at a time on a small preset, printing what it routed and what it computed.
//   ./build/bin/moe_layer [--config small] [--tokens 8] [--seed 1]
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include "tilemoe/tilemoe.hpp"

using namespace tilemoe;

int main(int argc, char** argv) {
  std::string config = "small";
  long long T = 8, seed = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("usage: moe_layer [--config NAME] [--tokens T] [--seed S]\n");
      return 0;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "moe_layer: error: option %s needs a value\n", a.c_str());
      return 2;
    }
    const std::string v = argv[++i];
    try {
      if (a == "--config") config = v;
      else if (a == "--tokens") T = parse_int(a, v, 1, 1ll << 24);
      else if (a == "--seed") seed = parse_int(a, v, 0, LLONG_MAX);
      else {
        std::fprintf(stderr, "moe_layer: error: unknown option %s (expected --config, --tokens, --seed)\n", a.c_str());
        return 2;
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "moe_layer: error: %s\n", e.what());
      return 2;
    }
  }
  try {
    const MoeConfig& cfg = preset(config);
    std::printf("MoE layer '%s': d %lld, expert size n %lld, %d experts, top-%d, %s router, %s\n\n",
                cfg.name.c_str(), (long long)cfg.d_model, (long long)cfg.d_expert, cfg.num_experts,
                cfg.top_k, to_string(cfg.router), to_string(cfg.activation));
    MoeWeights w = random_weights(cfg, DType::f32, static_cast<std::uint64_t>(seed));
    Tensor x = random_tokens(T, cfg.d_model, DType::f32, static_cast<std::uint64_t>(seed) + 1);

    // 1. Router: one logit per (token, expert).
    Tensor logits = router_logits(w, x);
    // 2. Top-k: each token picks K experts and their weights.
    const RouterConfig rc = cfg.router_config();
    Routing r = route(rc, logits, w.router_bias);
    std::printf("1-2. router + top-%d (weights sum to %s):\n", cfg.top_k, cfg.renormalize ? "1" : "less than 1");
    for (long long t = 0; t < T; ++t) {
      std::printf("  token %2lld ->", t);
      for (auto a = r.token_offsets[t]; a < r.token_offsets[t + 1]; ++a)
        std::printf("  expert %2d (w %.3f)", r.expert[a], r.weight[a]);
      std::printf("\n");
    }
    // 3. Group the assignments by expert: the irregular workload of the chapter.
    RoutingMetadata meta = build_metadata(r);
    std::printf("\n3. tokens per expert (an irregular workload):\n  ");
    for (int e = 0; e < cfg.num_experts; ++e) std::printf("e%d:%lld ", e, (long long)meta.counts[e]);
    std::printf("\n");
    // 4. Experts: each expert's SwiGLU FFN on its own rows.
    Tensor y = experts_forward(cfg, w, x, r, meta, Algorithm::sequential);
    // 5. Weighted sum back to tokens.
    Tensor out = combine(r, meta, y);
    add_shared_experts(cfg, w, x, out);
    std::printf("\n4-5. experts + weighted sum: out [%lld, %lld]; token 0 starts", T, (long long)cfg.d_model);
    const float* o = out.data<float>();
    for (int j = 0; j < 4; ++j) std::printf(" %.4f", o[j]);
    std::printf(" ...\n");

    // The same layer in one call, and against the float64 reference.
    Tensor out2 = moe_forward(cfg, w, x);
    const std::vector<double> ref = reference_forward(cfg, w, x, r);
    const double e_stages = relative_error(out.to_floats(), ref), e_call = relative_error(out2.to_floats(), ref);
    std::printf("\ncheck: stage by stage vs float64 reference %.2e, moe_forward() %.2e (bound 1e-5)\n", e_stages, e_call);
    if (!(e_stages < 1e-5 && e_call < 1e-5)) {
      std::fprintf(stderr, "moe_layer: error: result differs from the reference\n");
      return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_layer: error: %s\n", e.what());
    return 1;
  }
}
