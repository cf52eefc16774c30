// The stage model's kernel table, its variant lookups and its formulas (stage_model.hpp).
#include "perf/stage_model.hpp"

#include <algorithm>
#include <cmath>
#include <string>

namespace tilemoe::perf {

const std::vector<KernelModel>& kernel_models() {
  // efficiency and tile_k0 of each kernel family: the two values that reproduce its sonic-7b
  // (short reductions: d 1536 up, n 256 down) and mixtral-8x7b (d 4096 up, n 14336 down) layer
  // times at T 24576 in bench_moe_variants run 18 (NVIDIA H200, 2026-11-27, commit 14e18ac,
  // benchmarks/bench_moe_variants/results/h200_2026-11-27_run18_large.json), with the glue
  // below. Everything else the model predicts. The +rounding forms run the same kernels.
  static const std::vector<KernelModel> all = {
      {"grouped", 0.89, 570, false, false,
       "one launch per projection, cp.async pipeline: eff 0.89, tile cost 570 (run 18, H200, 14e18ac: "
       "sonic-7b 1.837 ms, mixtral-8x7b 29.382 ms at T 24576)"},
      {"grouped+rounding", 0.89, 570, true, false,
       "grouped's kernels after token rounding (0.175 ms + 0.0192 ns x T x E: H100 run 20, "
       "3ed8419)"},
      {"fused_1stage", 0.48, 166, false, true,
       "warp-specialized TMA + wgmma, one stage (no IO overlap): eff 0.48, tile cost 166 (run 18: "
       "sonic-7b 2.143 ms, mixtral-8x7b 51.039 ms)"},
      {"fused", 0.90, 310, false, true,
       "warp-specialized TMA + wgmma, pipelined (IO overlap): eff 0.90, tile cost 310 (run 18: "
       "sonic-7b 1.500 ms, mixtral-8x7b 27.832 ms)"},
      {"fused+rounding", 0.90, 310, true, true,
       "fused's kernels after token rounding (0.175 ms + 0.0192 ns x T x E: H100 run 20, "
       "3ed8419)"},
  };
  return all;
}

const KernelModel* kernel_model(const Variant& v) {
  if (v.measured || v.per_expert_us > 0) return nullptr;
  for (const auto& k : kernel_models())
    if (v.name == k.name && v.efficiency == k.efficiency) return &k;
  return nullptr;
}

const Variant* variant_for_bench(std::string_view bench_name, const std::vector<Variant>& variants) {
  auto find = [&](std::string_view name) -> const Variant* {
    for (const auto& v : variants)
      if (v.name == name) return &v;
    return nullptr;
  };
  if (const Variant* v = find(bench_name)) return v;
  if (bench_name == "fused_4stage") return find("fused");
  if (bench_name == "fused+rounding") return find("grouped+rounding+io_overlap");
  if (bench_name == "fused_1stage") return find("grouped");
  return nullptr;
}

double binomial_tail_above(double n, double p, double a) {
  const double mean = n * p, var = n * p * (1 - p);
  if (var <= 0) return mean > a ? 1.0 : 0.0;
  return 0.5 * std::erfc((a + 0.5 - mean) / std::sqrt(2 * var));
}

namespace {

// Sum over j >= 0 of P(X > tile j + offset), X ~ Binomial(tokens, K/E); the terms vanish a
// dozen standard deviations above the mean.
double tile_sum(double tokens, int top_k, int num_experts, double offset, bool exact_first) {
  const double p = static_cast<double>(top_k) / num_experts, mean = tokens * p;
  const double end = mean + 12 * std::sqrt(std::max(mean, 1.0)) + kTileRows;
  double sum = 0;
  int j = 0;
  if (exact_first) {  // P(X > 0) = 1 - (1 - p)^tokens, exact
    sum = 1 - std::pow(1 - p, tokens);
    j = 1;
  }
  for (; static_cast<double>(kTileRows) * j + offset < end; ++j)
    sum += binomial_tail_above(tokens, p, static_cast<double>(kTileRows) * j + offset);
  return sum;
}

}  // namespace

double expected_tiles(double tokens, int top_k, int num_experts) {
  return tile_sum(tokens, top_k, num_experts, 0, true);
}

double expected_rounded_tiles(double tokens, int top_k, int num_experts) {
  return tile_sum(tokens, top_k, num_experts, kTileRows / 2, false);
}

double tile_efficiency(double k, double k0) { return k / (k + k0); }

GlueCost glue_cost(const MoeConfig& c, const Hardware& hw, double tokens, bool rounding) {
  const double T = tokens, d = static_cast<double>(c.d_model), E = c.num_experts, K = c.top_k;
  const double bw = hw.achievable_hbm_tbps * 1e12;
  GlueCost g;
  // Router logits as src/cuda/router.cu computes them: three bf16 GEMMs [T, d] x [d, E] over a
  // hi/mid/lo split of the fp32 weights, each reading x, accumulating fp32 logits. Skinny GEMMs
  // (N = E): 0.28 of the achievable rate, from sonic-7b's 0.14 ms at T 24576 (H200, run 18,
  // 14e18ac, examples/06 stage times); memory bound where E is small.
  g.router = std::max(3 * 2 * T * d * E / (hw.achievable_bf16_tflops * 1e12 * kRouterEfficiency),
                      (3 * 2 * T * d + 4 * T * E) / bw);
  // Combine: read y [T K, d] bf16, the fp32 weights and int32 slots, write out [T, d] bf16.
  g.combine = (2 * T * K * d + 8 * T * K + 2 * T * d) / bw;
  // Top-k and metadata: 0.06 + 0.04 ms on sonic-7b at T 24576 (run 18 stage times); the
  // layer's fixed cost at T 64 is about the same (olmoe-1b-7b fused 0.294 ms against a 0.191 ms
  // memory roofline, run 18 small): one constant.
  g.fixed = kGlueFixedSeconds;
  // Token rounding (the kernels of b29bd46 on): a fixed part and a part per router probability
  // (T x E), the least-squares fit of a + b T E to the rounding stages (rounding_probs +
  // rounding_metadata + rounding, medians) of sonic-7b-shaped layers (d 1536, n 256) at E 128 K 8,
  // E 256 K 4 and E 512 K 8, T 16384 and 24576, on the H100 (bench_moe_variants run 20,
  // 2026-11-27, commit 3ed8419; the stage medians are in the run's log, its JSON
  // results/h100_2026-11-27_run20_sparsity.json keeps the layer times): 0.208 to 0.422 ms, the fit
  // within -8% .. +8% of each. 0.0192 ns per 4-byte probability is ~14x slower than
  // streaming them on the H100, so the term is not scaled by bandwidth.
  // The pre-b29bd46 kernels (runs 12, 17) cost 0.26 ms + 0.086 ns x T x E (H100 run 12).
  if (rounding) g.rounding = kRoundingFixedSeconds + kRoundingPerTokenExpertSeconds * T * E;
  return g;
}

}  // namespace tilemoe::perf
