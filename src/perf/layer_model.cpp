// One MoE layer on one GPU: FLOPs, weight and activation bytes, all-to-all bytes, the time each
// takes at the card's achievable rates, and the bound that wins. Also the primitive formulas.
#include <algorithm>
#include <cmath>

#include "perf/rates.hpp"
#include "perf/stage_model.hpp"
#include "tilemoe/error.hpp"
#include "tilemoe/perf_model.hpp"

namespace tilemoe::perf {

double expert_flops_per_token(std::int64_t d, std::int64_t n, bool gated) {
  // gate + up ([2n, d]) and down ([d, n]): 3 d n multiply-adds gated, 2 d n plain.
  return 2.0 * (gated ? 3.0 : 2.0) * static_cast<double>(d) * static_cast<double>(n);
}

double dispatch_bytes(std::int64_t tokens, int top_k, std::int64_t d, int ep, double elem_bytes) {
  // Experts are spread evenly over ep GPUs: (ep - 1) / ep of the T K rows leave the GPU.
  return static_cast<double>(tokens) * top_k * static_cast<double>(d) * elem_bytes *
         (static_cast<double>(ep - 1) / ep);
}

double experts_touched(int num_experts, int top_k, int ep, std::int64_t tokens_per_gpu) {
  // The ep GPUs of one expert group feed T * ep tokens; each picks a given expert with
  // probability K / E (uniform routing).
  const double local = static_cast<double>(num_experts) / ep;
  const double miss = std::pow(1.0 - static_cast<double>(top_k) / num_experts,
                               static_cast<double>(tokens_per_gpu) * ep);
  return local * (1.0 - miss);
}

Bound winning_bound(double t_compute, double t_memory, double t_network) {
  if (t_network > t_compute && t_network > t_memory) return Bound::network;
  return t_memory > t_compute ? Bound::memory : Bound::compute;
}

double tokens_per_day(double tokens_per_second) { return tokens_per_second * 86400.0; }

double attention_params(const ModelSpec& m) {
  const MoeConfig& c = m.moe;
  const double d = static_cast<double>(c.d_model), H = c.n_heads, hd = c.head_dim;
  if (m.mla.enabled()) {
    // DeepSeek-V3 MLA: q down/up (via q_lora_rank), kv down to kv_lora_rank + rope key, kv up to
    // H (nope key + value) heads, output; head_dim stands for qk_nope_head_dim and v_head_dim.
    const double qr = static_cast<double>(m.mla.q_lora_rank), kvr = static_cast<double>(m.mla.kv_lora_rank),
                 rope = static_cast<double>(m.mla.rope_dim);
    const double q = qr > 0 ? d * qr + qr * H * (hd + rope) : d * H * (hd + rope);
    return q + d * (kvr + rope) + kvr * H * (hd + hd) + H * hd * d;
  }
  return d * H * hd + 2.0 * d * c.n_kv_heads * hd + H * hd * d;
}

double kv_elems_per_token(const ModelSpec& m) {
  if (m.mla.enabled()) return static_cast<double>(m.mla.kv_lora_rank + m.mla.rope_dim);
  return 2.0 * m.moe.n_kv_heads * m.moe.head_dim;
}

namespace detail_perf {

// Training counts the backward as about twice the forward: compute and memory traffic x3, and
// the all-to-all twice (the backward sends the gradients of dispatch and combine); recompute
// adds one more forward.
double compute_factor(const Workload& w) {
  return w.mode == Mode::training ? (w.recompute ? 4.0 : 3.0) : 1.0;
}
double network_factor(const Workload& w) {
  return w.mode == Mode::training ? (w.recompute ? 3.0 : 2.0) : 1.0;
}

// Achievable rates for the workload's precision.
double flop_rate(const Hardware& hw, Precision p) {
  if (p == Precision::fp8) {
    check_arg(hw.fp8_tflops > 0, "--precision", "fp8",
              tilemoe::detail::concat("bf16 on ", hw.description, ", which has no fp8 tensor cores"));
    return hw.achievable_fp8_tflops() * 1e12;
  }
  return hw.achievable_bf16_tflops * 1e12;
}

double weight_bytes_per_param(Precision p) { return p == Precision::fp8 ? 1.0 : 2.0; }

// Time for `bytes` sent by one GPU in an all-to-all over ep GPUs: NVLink inside a node, the
// network for the share that goes to other nodes; the two run at once.
double all_to_all_time(const Hardware& hw, int ep, double bytes) {
  if (ep <= 1 || bytes <= 0) return 0;
  const double nvlink = hw.nvlink_gbps / 2 * 1e9 * hw.comm_efficiency;  // one direction
  const double net = hw.network_gbps * 1e9 * hw.comm_efficiency;
  if (ep <= hw.gpus_per_node) return bytes / nvlink;
  const double intra_share = static_cast<double>(hw.gpus_per_node - 1) / (ep - 1);
  return std::max(bytes * intra_share / nvlink, bytes * (1 - intra_share) / net);
}

}  // namespace detail_perf


LayerCost moe_layer_cost(const ModelSpec& m, const Hardware& hw, const Layout& l,
                         const Workload& w, const Variant& v) {
  const MoeConfig& c = m.moe;
  check_arg(v.efficiency > 0 && v.efficiency <= 1.5, "variant efficiency", v.efficiency,
            tilemoe::detail::concat("0 < efficiency <= 1.5 (", v.name, ")"));
  const bool gated = is_gated(c.activation);
  const double T = static_cast<double>(w.tokens_per_gpu);
  const double d = static_cast<double>(c.d_model), n = static_cast<double>(c.d_expert),
               ds = static_cast<double>(c.d_shared);
  const double rows = T * c.top_k * w.imbalance;  // routed rows on the busiest GPU
  const double ab = 2.0;            // activations bf16
  const double wb = detail_perf::weight_bytes_per_param(w.precision);
  const double r = gated ? 3.0 : 2.0;

  LayerCost lc;
  lc.flops_routed = rows * expert_flops_per_token(c.d_model, c.d_expert, gated);
  lc.flops_shared = T * c.num_shared * expert_flops_per_token(c.d_model, c.d_shared, gated);
  lc.flops_router = 2.0 * T * d * c.num_experts;
  lc.flops = lc.flops_routed + lc.flops_shared + lc.flops_router;

  // Weights read once per step: the local experts that got tokens, shared experts, router.
  lc.weight_bytes = experts_touched(c.num_experts, c.top_k, l.ep, w.tokens_per_gpu) * r * d * n * wb +
                    c.num_shared * r * d * ds * wb + d * c.num_experts * ab;
  // Activation traffic per routed row. Unfused: gather (read d, write d), up-proj (read d,
  // write 2n), SwiGLU (read 2n, write n), down-proj (read n, write d), combine (read d):
  // 5d + 6n. Fused (SonicMoE): gather inside the up-proj (read d), SwiGLU in its epilogue
  // (write n), down-proj (read n, write d), combine (read d): 3d + 2n.
  const double per_row = v.fused_io ? 3 * d + 2 * n : 5 * d + 6 * n;
  const double per_shared = v.fused_io ? 2 * d + 2 * ds : 2 * d + 6 * ds;
  lc.act_bytes = ab * (rows * per_row + T * c.num_shared * per_shared + 2 * T * d) +
                 4.0 * T * c.num_experts;  // + fp32 router logits
  // Each GPU sends its share; the busiest receives imbalance times the mean, which bounds the
  // all-to-all.
  lc.dispatch_bytes = dispatch_bytes(w.tokens_per_gpu, c.top_k, c.d_model, l.ep, ab) * w.imbalance;
  lc.combine_bytes = lc.dispatch_bytes;

  const double cf = detail_perf::compute_factor(w);
  if (const KernelModel* km = kernel_model(v)) {
    // Stage model (stage_model.hpp, docs/throughput.md): the grouped GEMMs as tiles, each with a
    // fixed cost of tile_k0 reduction elements, over the rows computed in whole 128-row tiles
    // (the expected padding of each expert's last tile, or the rounded counts), then the stages
    // that run before and after them: router, top-k and metadata, rounding, combine. Each local
    // expert receives X ~ Binomial(T * ep * imbalance, K / E) rows.
    const double local = static_cast<double>(c.num_experts) / l.ep;
    const double feed = T * l.ep * w.imbalance;
    const double tiles = km->rounding ? expected_rounded_tiles(feed, c.top_k, c.num_experts)
                                      : expected_tiles(feed, c.top_k, c.num_experts);
    const double computed = local * tiles * kTileRows;  // rows the GEMMs compute
    const double touched =
        km->rounding ? local * binomial_tail_above(feed, static_cast<double>(c.top_k) / c.num_experts, kTileRows / 2)
                     : experts_touched(c.num_experts, c.top_k, l.ep, w.tokens_per_gpu);
    const double up = computed * 2 * d * (r - 1) * n, down = computed * 2 * n * d;
    const double s_up = T * c.num_shared * 2 * d * (r - 1) * ds, s_down = T * c.num_shared * 2 * ds * d;
    auto cost = [&](double flops, double k) { return k > 0 ? flops / tile_efficiency(k, km->tile_k0) : 0.0; };
    const double gemm_flops = cost(up, d) + cost(down, n) + cost(s_up, d) + cost(s_down, ds);
    const double t_gemm = gemm_flops / (detail_perf::flop_rate(hw, w.precision) * km->efficiency);
    // GEMM traffic: the touched experts' and shared weights; per computed row, x gathered (d),
    // the activation written and read (n each), y written (d).
    lc.weight_bytes = touched * r * d * n * wb + c.num_shared * r * d * ds * wb + d * c.num_experts * ab;
    const double gemm_act = ab * (computed * (2 * d + 2 * n) + T * c.num_shared * (2 * d + 2 * ds));
    const double t_gemm_mem = (lc.weight_bytes + gemm_act) / (hw.achievable_hbm_tbps * 1e12);
    GlueCost g = glue_cost(c, hw, T, km->rounding);
    // Training: the backward's stages cost as much again per forward-equivalent; rounding runs in
    // each forward only (twice with recompute).
    g.router *= cf; g.combine *= cf; g.fixed *= cf;
    if (w.mode == Mode::training) g.rounding *= w.recompute ? 2.0 : 1.0;
    lc.act_bytes = gemm_act + ab * (T * c.top_k * d + T * d) + 8.0 * T * c.top_k +  // combine
                   ab * T * d + 4.0 * T * c.num_experts;                              // router
    // The glue runs between the GEMMs and overlaps neither bound: it adds to both.
    lc.t_compute = cf * t_gemm + g.total();
    lc.t_memory = cf * t_gemm_mem + g.total();
  } else {  // whole-layer efficiency
    double efficiency = v.efficiency, t_host = 0;
    if (v.per_expert_us > 0) {  // one GEMM pair per local expert from a host loop
      const double touched = experts_touched(c.num_experts, c.top_k, l.ep, w.tokens_per_gpu);
      const double m = rows / std::max(touched, 1.0);  // rows per expert
      efficiency *= m / (std::ceil(m / 128.0) * 128.0);
      t_host = cf * touched * v.per_expert_us * 1e-6;
    }
    lc.t_compute = cf * lc.flops / (detail_perf::flop_rate(hw, w.precision) * efficiency) + t_host;
    lc.t_memory = cf * (lc.weight_bytes + lc.act_bytes) / (hw.achievable_hbm_tbps * 1e12);
  }
  lc.t_network = detail_perf::network_factor(w) *
                 detail_perf::all_to_all_time(hw, l.ep, lc.dispatch_bytes + lc.combine_bytes);
  lc.t_total = std::max(lc.t_compute, lc.t_memory) + lc.t_network;
  lc.bound = winning_bound(lc.t_compute, lc.t_memory, lc.t_network);
  if (w.mode == Mode::training) {  // report the step's totals, forward + backward
    lc.flops *= cf; lc.flops_routed *= cf; lc.flops_shared *= cf; lc.flops_router *= cf;
    lc.weight_bytes *= cf; lc.act_bytes *= cf;
    lc.dispatch_bytes *= detail_perf::network_factor(w); lc.combine_bytes *= detail_perf::network_factor(w);
  }
  return lc;
}

}  // namespace tilemoe::perf
