// Step 6: the full optimized MoE layer. Every technique of the chapter in one forward on the GPU:
// grouped GEMMs over all experts (one launch per projection), the token gather and SwiGLU fused
// into them, warp-specialized kernels whose TMA loads overlap the wgmma math, and tile-aware
// token rounding. Prints where the time goes, stage by stage, the speedup over the sequential
// baseline (one cuBLAS GEMM pair per expert), and checks the result against the float64
// reference on a sample of tokens.
//   optimized_moe_layer [--config sonic-7b] [--tokens 24576] [--reps 10]
#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "tilemoe/tilemoe.hpp"

using namespace tilemoe;

namespace {

struct Args {
  std::string config = "sonic-7b";
  std::int64_t tokens = 24576;
  int reps = 10;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "-h" || k == "--help") {
      std::printf("usage: optimized_moe_layer [--config NAME] [--tokens T] [--reps R]\n");
      std::exit(0);
    }
    if (i + 1 >= argc) throw InvalidArgument(k + ": expected a value");
    const std::string v = argv[++i];
    if (k == "--config") a.config = v;
    else if (k == "--tokens") a.tokens = parse_int(k, v, 1, 1ll << 24);
    else if (k == "--reps") a.reps = static_cast<int>(parse_int(k, v, 1, 100000));
    else throw InvalidArgument("argument '" + k + "': unknown (see --help)");
  }
  return a;
}

struct Timed {
  double layer = 0;                   // median of the stage sums
  std::vector<StageTime> stages;      // median per stage, in order
  ForwardTrace trace;                 // of the last run
};

Timed run(const MoeConfig& c, const MoeWeights& w, const Tensor& x, ForwardOptions opt, int reps, Tensor* out) {
  opt.time_stages = true;
  std::map<std::string, std::vector<double>> all;
  std::vector<double> layer;
  Timed t;
  for (int r = 0; r <= reps; ++r) {  // the first is a warm-up
    ForwardTrace tr;
    *out = moe_forward(c, w, x, opt, &tr);
    if (r == 0) continue;
    double sum = 0;
    for (const StageTime& s : tr.stages) all[s.name].push_back(s.ms), sum += s.ms;
    layer.push_back(sum);
    if (r == reps) {
      for (const StageTime& s : tr.stages) t.stages.push_back({s.name, 0});
      t.trace = std::move(tr);
    }
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  for (StageTime& s : t.stages) s.ms = median(all[s.name]);
  t.layer = median(layer);
  return t;
}

// Relative error of 32 sampled tokens of `out` against the float64 reference for the routing used.
double check(const MoeConfig& c, const MoeWeights& wh, const Tensor& xh, const Tensor& out, const Routing& r) {
  std::mt19937_64 g(3);
  const std::int64_t T = xh.dim(0), d = c.d_model;
  std::vector<std::int64_t> tokens{0, T - 1};
  while (tokens.size() < 32 && static_cast<std::int64_t>(tokens.size()) < T) tokens.push_back(g() % T);
  const std::vector<float> o = out.to_floats(), xf = xh.to_floats();
  std::vector<float> got, xs;
  Routing sub;
  sub.num_tokens = static_cast<std::int64_t>(tokens.size());
  sub.num_experts = c.num_experts;
  sub.token_offsets.push_back(0);
  for (std::int64_t t : tokens) {
    got.insert(got.end(), o.begin() + t * d, o.begin() + (t + 1) * d);
    xs.insert(xs.end(), xf.begin() + t * d, xf.begin() + (t + 1) * d);
    for (auto a = r.token_offsets[t]; a < r.token_offsets[t + 1]; ++a) {
      sub.expert.push_back(r.expert[a]);
      sub.weight.push_back(r.weight[a]);
    }
    sub.token_offsets.push_back(static_cast<std::int64_t>(sub.expert.size()));
  }
  const Tensor xsub = Tensor::from_floats({sub.num_tokens, d}, xs, DType::bf16);
  return relative_error(got, reference_forward(c, wh, xsub, sub));
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
    const MoeConfig& c = preset(a.config);
    if (!cuda_available()) {
      std::printf("optimized_moe_layer: no CUDA GPU (or a build without the CUDA backend): this step runs on the GPU\n");
      return 2;
    }
    std::printf("optimized_moe_layer: %s (d %lld, n %lld, E %d, K %d, %d shared), T %lld, bf16, on %s\n\n",
                c.name.c_str(), (long long)c.d_model, (long long)c.d_expert, c.num_experts, c.top_k, c.num_shared,
                (long long)a.tokens, device_name(Device::cuda).c_str());
    const MoeWeights wh = random_weights(c, DType::bf16, 1);
    const Tensor xh = random_tokens(a.tokens, c.d_model, DType::bf16, 2);
    const MoeWeights w = wh.to(Device::cuda);
    const Tensor x = xh.to(Device::cuda);
    const double flops = c.flops_per_token() * static_cast<double>(a.tokens);

    ForwardOptions seq, grp, fused, fused_r;
    seq.algorithm = Algorithm::sequential;
    grp.algorithm = Algorithm::grouped;
    fused.algorithm = fused_r.algorithm = Algorithm::fused;
    fused_r.rounding = RoundingOptions{};
    Tensor out;
    const Timed ts = run(c, w, x, seq, a.reps, &out);
    const Timed tg = run(c, w, x, grp, a.reps, &out);
    const Timed tf = run(c, w, x, fused, a.reps, &out);
    const double err_f = check(c, wh, xh, out, tf.trace.routing);
    const Timed tr = run(c, w, x, fused_r, a.reps, &out);
    const double err_r = check(c, wh, xh, out, tr.trace.routing);

    std::printf("kernels: %s\n\n", tr.trace.path.c_str());
    std::printf("where the time goes (median of %d, ms)\n", a.reps);
    std::printf("  %-18s %10s %16s\n", "stage", "fused", "fused+rounding");
    for (const StageTime& s : tr.stages) {
      double f = 0;
      for (const StageTime& q : tf.stages)
        if (q.name == s.name) f = q.ms;
      if (f > 0) std::printf("  %-18s %10.3f %16.3f\n", s.name.c_str(), f, s.ms);
      else std::printf("  %-18s %10s %16.3f\n", s.name.c_str(), "-", s.ms);
    }
    std::printf("  %-18s %10.3f %16.3f\n\n", "layer", tf.layer, tr.layer);

    std::printf("  %-18s %10s %10s %12s\n", "variant", "ms", "TFLOP/s", "x sequential");
    for (auto [name, t] : {std::pair{"sequential", &ts}, {"grouped", &tg}, {"fused", &tf}, {"fused+rounding", &tr}})
      std::printf("  %-18s %10.3f %10.1f %12.2f\n", name, t->layer, flops / (t->layer * 1e-3) / 1e12,
                  ts.layer / t->layer);
    if (tr.trace.rounding)
      std::printf("\nrounding: tile utilization %.1f%% -> %.1f%%, %lld assignments dropped, %lld added\n",
                  100 * tr.trace.rounding->utilization_before, 100 * tr.trace.rounding->utilization_after,
                  (long long)tr.trace.rounding->dropped, (long long)tr.trace.rounding->added);
    const bool ok = err_f < 1e-2 && err_r < 1e-2;
    std::printf("check: relative error vs the float64 reference on 32 tokens: fused %.2e, fused+rounding %.2e: %s\n",
                err_f, err_r, ok ? "OK" : "MISMATCH");
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "optimized_moe_layer: %s\n", e.what());
    return 1;
  }
}
