// The checklist measurements of `tilemoe demo`, built on the public API only.
#include "demo_checks.hpp"

#include <algorithm>
#include <cstdio>

#include "commands.hpp"

namespace tilemoe::tool {
namespace {

template <class... Args>
std::string fmt(const char* f, Args... args) {
  char buf[256];
  std::snprintf(buf, sizeof buf, f, args...);
  return buf;
}

// The first n tokens of a routing and of x (host copies), for a float64 check on a sample.
Routing head(const Routing& r, std::int64_t n) {
  Routing h;
  h.num_tokens = n;
  h.num_experts = r.num_experts;
  h.token_offsets.assign(r.token_offsets.begin(), r.token_offsets.begin() + n + 1);
  h.expert.assign(r.expert.begin(), r.expert.begin() + h.token_offsets.back());
  h.weight.assign(r.weight.begin(), r.weight.begin() + h.token_offsets.back());
  return h;
}

Tensor head_rows(const Tensor& x, std::int64_t n) {
  Tensor h = x.to(Device::cpu);
  std::vector<float> v = h.to_floats();
  v.resize(static_cast<std::size_t>(n * x.dim(1)));
  return Tensor::from_floats({n, x.dim(1)}, v, x.dtype());
}

struct Layer {
  MoeWeights w;
  Tensor x;
};

CheckResult check_forward(const DemoSetup& s, const Layer& l) {
  CheckResult r{"Basic MoE forward pass works"};
  ForwardTrace tr;
  Tensor out = moe_forward(s.cfg, l.w, l.x, {}, &tr);
  const std::int64_t n = std::min<std::int64_t>(s.tokens, 64);
  Tensor out_head = head_rows(out, n);
  const std::vector<double> ref = reference_forward(s.cfg, l.w, head_rows(l.x, n), head(tr.routing, n));
  const double err = relative_error(out_head.to_floats(), ref);
  const double bound = s.dtype == DType::f32 ? 1e-5 : 1e-2;
  r.value = err;
  r.status = err < bound ? CheckStatus::pass : CheckStatus::fail;
  r.detail = fmt("relative error %.2e vs float64 reference on %g tokens (bound %.0e)", err,
                 static_cast<double>(n), bound);
  return r;
}

double time_variant(const DemoSetup& s, const Layer& l, Algorithm alg, bool rounding, const char* label,
                    int stages = 0) {
  ForwardOptions opt;
  opt.algorithm = alg;
  opt.pipeline_stages = stages;
  if (rounding) opt.rounding = RoundingOptions{};
  if (s.verbose) std::printf("  timing %-20s ...", label), std::fflush(stdout);
  Timing t;
  try {
    t = time_runs([&] { moe_forward(s.cfg, l.w, l.x, opt); }, s.repeats, s.device, label);
  } catch (const Error&) {
    if (s.verbose) std::printf(" unavailable\n");
    throw;
  }
  if (s.verbose) std::printf(" %.3f ms\n", t.median_ms);
  return t.median_ms;
}

}  // namespace

CheckResult check_load_balancing(const DemoSetup& s);  // demo_balance.cpp

std::vector<CheckResult> run_demo_checks(const DemoSetup& s) {
  Layer l;
  l.w = random_weights(s.cfg, s.dtype, s.seed);
  l.x = random_tokens(s.tokens, s.cfg.d_model, s.dtype, s.seed + 1);
  if (s.device == Device::cuda) {
    l.w = l.w.to(Device::cuda);
    l.x = l.x.to(Device::cuda);
  }
  std::vector<CheckResult> out;
  out.push_back(check_forward(s, l));

  const double seq = time_variant(s, l, Algorithm::sequential, false, "sequential");
  const double grp = time_variant(s, l, Algorithm::grouped, false, "grouped");
  const double grp_round = time_variant(s, l, Algorithm::grouped, true, "grouped + rounding");
  double fused = 0, fused_round = 0;  // GPU with the fused kernels only
  {
    CheckResult r{"Grouped GEMM faster than sequential"};
    r.value = seq / grp;
    r.status = r.value > 1.0 ? CheckStatus::pass : CheckStatus::fail;
    r.detail = fmt("%.2fx (sequential %.2f ms, grouped %.2f ms)", r.value, seq, grp);
    out.push_back(r);
  }
  {
    CheckResult r{"Tile-aware rounding improves utilization to >95%"};
    ForwardTrace tr;
    ForwardOptions opt;
    opt.rounding = RoundingOptions{};
    moe_forward(s.cfg, l.w, l.x, opt, &tr);
    const RoundingMetrics& m = *tr.rounding;
    r.value = m.utilization_after;
    r.status = m.utilization_after > 0.95 && m.utilization_after >= m.utilization_before ? CheckStatus::pass
                                                                                       : CheckStatus::fail;
    r.detail = fmt("tile 128: %.1f%% -> %.1f%% (rule nearest)", 100 * m.utilization_before,
                   100 * m.utilization_after);
    out.push_back(r);
  }
  {
    CheckResult r{"IO overlap reduces latency by 10-15%"};
    if (s.device == Device::cpu) {
      r.detail = "not on the CPU: IO overlap is the GPU's TMA pipeline (run on a GPU)";
    } else {
      // The same warp-specialized kernels with one pipeline stage (load a tile, then compute
      // it) and with four (TMA loads of later tiles in flight while wgmma runs).
      ForwardTrace tr;
      ForwardOptions fo;
      fo.algorithm = Algorithm::fused;
      moe_forward(s.cfg, l.w, l.x, fo, &tr);
      if (tr.path.rfind("fused: ", 0) != 0) {
        r.detail = "fused kernels unavailable here: " + tr.path;
      } else {
        const double one = time_variant(s, l, Algorithm::fused, false, "fused, 1 stage", 1);
        const double four = time_variant(s, l, Algorithm::fused, false, "fused, 4 stages", 4);
        fused = time_variant(s, l, Algorithm::fused, false, "fused");
        fused_round = time_variant(s, l, Algorithm::fused, true, "fused + rounding");
        r.value = 1.0 - four / one;
        r.status = r.value >= 0.10 ? CheckStatus::pass : CheckStatus::fail;
        r.detail = fmt("%.1f%% lower (1 stage %.2f ms -> 4 stages %.2f ms; fused %.2f, grouped %.2f ms)",
                       100 * r.value, one, four, fused, grp);
      }
    }
    out.push_back(r);
  }
  out.push_back(check_load_balancing(s));
  {
    CheckResult r{"End-to-end speedup > 1.5x"};
    const bool f = fused_round > 0;
    const double best = f ? fused_round : grp_round;
    r.value = seq / best;
    r.status = r.value > 1.5 ? CheckStatus::pass : CheckStatus::fail;
    r.detail = fmt("%.2fx: %s + rounding %.2f ms vs sequential %.2f ms", r.value, f ? "fused" : "grouped", best, seq);
    out.push_back(r);
  }
  return out;
}

}  // namespace tilemoe::tool
