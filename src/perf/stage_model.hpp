// The stage model of the GPU library's one-launch variants (grouped, fused, their +rounding
// forms, fused_1stage): the layer as the stages it runs one after another, router, top-k and
// metadata, token rounding, the two grouped GEMMs, combine, each at its own rate. Internal to
// src/perf, the throughput program and the tests; docs/throughput.md "The stage model" gives the
// formulas and where every constant was measured.
#pragma once
#include <string_view>
#include <vector>

#include "tilemoe/perf_model.hpp"

namespace tilemoe::perf {

// One kernel family of the GPU library, as default_variants() describes it.
struct KernelModel {
  const char* name;   // the Variant (and bench_moe_variants) name
  double efficiency;  // share of the achievable GEMM rate on a long reduction (the Variant's)
  double tile_k0;     // a tile's fixed cost (pipeline fill, epilogue) in elements of the reduction
  bool rounding;      // tile-aware token rounding (nearest, 128-row tiles) before the GEMMs
  bool fused_io;      // the Variant's fused_io (activation memory as SonicMoE keeps it)
  const char* source; // where efficiency and tile_k0 were measured
};
const std::vector<KernelModel>& kernel_models();

// The stage model that predicts v: v is one of the one-launch defaults exactly as
// default_variants() returns it (name and efficiency) and not measured. nullptr otherwise: a
// measured, the chapter's or a caller's efficiency is the whole layer's.
const KernelModel* kernel_model(const Variant& v);

// The variant of `variants` that predicts bench_moe_variants' `bench_name`: the same name, else
// fused_4stage -> fused (the same IO overlap, four stages in both projections), fused+rounding ->
// grouped+rounding+io_overlap and fused_1stage -> grouped (the chapter's names for rounding + IO
// overlap and for no IO overlap). nullptr where none fits (dense_cublas, torch_grouped_mm, ...).
const Variant* variant_for_bench(std::string_view bench_name, const std::vector<Variant>& variants);

// ---- formulas (exposed for tests) -----------------------------------------------------------

inline constexpr int kTileRows = 128;  // rows of a grouped GEMM tile and of token rounding

// P(X > a) for X ~ Binomial(n, p): the normal approximation with continuity correction; exact
// when the variance is 0.
double binomial_tail_above(double n, double p, double a);
// Expected 128-row tiles of one expert that receives X ~ Binomial(tokens, K/E) rows: each
// expert's last tile is padded, sum over j >= 0 of P(X > 128 j).
double expected_tiles(double tokens, int top_k, int num_experts);
// The same after nearest rounding (a remainder r rounds up when r > 64, else down): sum over
// j >= 0 of P(X > 128 j + 64). An expert with 1..64 rows gets none.
double expected_rounded_tiles(double tokens, int top_k, int num_experts);
// Share of a tile's time spent on its reduction of length k when the tile's fixed cost equals
// k0 more elements: k / (k + k0).
double tile_efficiency(double k, double k0);

// The stages around the GEMMs, in seconds, forward, one GPU with `tokens` tokens.
struct GlueCost {
  double router = 0;    // logits: three bf16 GEMMs (hi/mid/lo split of the fp32 weights)
  double combine = 0;   // read y (T K d), write out (T d), weights and slots (8 T K bytes)
  double fixed = 0;     // top-k, metadata and the launches of the small stages
  double rounding = 0;  // token rounding, when the variant rounds
  double total() const { return router + combine + fixed + rounding; }
};
GlueCost glue_cost(const MoeConfig& c, const Hardware& hw, double tokens, bool rounding);

// Measured constants of the glue (docs/throughput.md cites each).
inline constexpr double kRouterEfficiency = 0.28;        // of the achievable bf16 rate
inline constexpr double kGlueFixedSeconds = 0.10e-3;     // top-k + metadata + launches
// Token rounding = fixed + per T x E: least-squares fit to H100 run 20 (stage_model.cpp).
inline constexpr double kRoundingFixedSeconds = 0.175e-3;
inline constexpr double kRoundingPerTokenExpertSeconds = 0.0192e-9;

}  // namespace tilemoe::perf
