// The whole model on a cluster: per-step time of attention, MoE and dense layers, LM head and
// gradient sync; tokens/s and tokens/day; memory per GPU and whether it fits.
#include <algorithm>
#include <cstdio>
#include <numeric>

#include "perf/rates.hpp"
#include "tilemoe/error.hpp"
#include "tilemoe/perf_model.hpp"

namespace tilemoe::perf {

const char* to_string(Mode m) {
  switch (m) {
    case Mode::prefill: return "prefill";
    case Mode::decode: return "decode";
    case Mode::training: return "training";
  }
  return "?";
}
const char* to_string(Precision p) { return p == Precision::fp8 ? "fp8" : "bf16"; }
const char* to_string(Bound b) {
  switch (b) {
    case Bound::compute: return "compute";
    case Bound::memory: return "memory";
    case Bound::network: return "network";
  }
  return "?";
}

Mode parse_mode(std::string_view s) {
  for (auto m : {Mode::prefill, Mode::decode, Mode::training})
    if (s == to_string(m)) return m;
  throw InvalidArgument(detail::concat("--mode = '", s, "': expected prefill, decode or training"));
}

Precision parse_precision(std::string_view s) {
  if (s == "bf16") return Precision::bf16;
  if (s == "fp8") return Precision::fp8;
  throw InvalidArgument(detail::concat("--precision = '", s, "': expected bf16 or fp8"));
}

int default_ep(int num_gpus, int num_experts) {
  return num_gpus >= 1 && num_experts >= 1 ? std::gcd(num_gpus, num_experts) : 1;
}

void validate_layout(const Layout& l, const MoeConfig& c) {
  check_arg(l.num_gpus >= 1, "--num-gpus", l.num_gpus, "at least 1");
  check_arg(l.ep >= 1 && l.num_gpus % l.ep == 0, "--ep", l.ep,
            detail::concat("a divisor of --num-gpus (", l.num_gpus, ")"));
  check_arg(c.num_experts % l.ep == 0, "--ep", l.ep,
            detail::concat("a divisor of the ", c.num_experts, " experts of ", c.name));
  check_arg(l.zero_stage >= 0 && l.zero_stage <= 3, "--zero", l.zero_stage, "0, 1, 2 or 3");
}

void Workload::validate() const {
  check_arg(tokens_per_gpu >= 1 && tokens_per_gpu <= (std::int64_t{1} << 24), "--batch-tokens",
            tokens_per_gpu, "1 <= tokens per GPU <= 2^24");
  check_arg(imbalance >= 1.0 && imbalance <= 1e4, "--imbalance", imbalance,
            "1 <= imbalance (busiest / mean routed rows per GPU)");
  check_arg(seq_len >= 1 && seq_len <= (std::int64_t{1} << 24), "--seq-len", seq_len, "1 <= seq_len <= 2^24");
}

ParamCount count_params(const ModelSpec& m) {
  const MoeConfig& c = m.moe;
  const bool gated = is_gated(c.activation);
  const double r = gated ? 3.0 : 2.0, d = static_cast<double>(c.d_model);
  const int moe_layers = c.num_layers - c.num_dense_layers;
  ParamCount p;
  p.experts = moe_layers * static_cast<double>(c.num_experts) * r * d * c.d_expert;
  const double attn = c.num_layers * attention_params(m);
  const double shared = moe_layers * (c.num_shared * r * d * c.d_shared + d * c.num_experts);
  const double dense = c.num_dense_layers * r * d * c.d_dense_ff;
  const double embed = 2.0 * d * c.vocab;  // input embedding + LM head, untied
  p.replicated = attn + shared + dense + embed;
  p.active_per_token = p.replicated + moe_layers * static_cast<double>(c.top_k) * r * d * c.d_expert;
  return p;
}

namespace {

// Time of a dense stage: roofline of FLOPs at the dense efficiency against bytes.
double dense_time(const Hardware& hw, const Workload& w, double flops, double bytes) {
  const double cf = detail_perf::compute_factor(w);
  return cf * std::max(flops / (detail_perf::flop_rate(hw, w.precision) * kDenseEfficiency),
                       bytes / (hw.achievable_hbm_tbps * 1e12));
}

// Activation bytes per token that one MoE layer keeps for the backward (training) or holds at
// once (inference). Unfused: gathered x, h [2n], a [n], y [d] per routed row. Fused (SonicMoE):
// x once and h per row; a and y are recomputed or never stored.
double moe_act_per_token(const MoeConfig& c, bool fused, double imbalance) {
  const double ab = 2.0, d = static_cast<double>(c.d_model), n = static_cast<double>(c.d_expert),
               ds = static_cast<double>(c.d_shared);
  const double routed = imbalance * (fused ? d + c.top_k * 2 * n : c.top_k * (2 * d + 3 * n));
  const double shared = c.num_shared * (fused ? 2 * ds : 3 * ds);
  return ab * (routed + shared) + 4.0 * c.num_experts;  // + fp32 router scores
}

}  // namespace

ModelCost model_cost(const ModelSpec& m, const Hardware& hw, const Layout& l, const Workload& w,
                     const Variant& v) {
  const MoeConfig& c = m.moe;
  hw.validate();
  validate_layout(l, c);
  w.validate();
  const bool gated = is_gated(c.activation);
  const double T = static_cast<double>(w.tokens_per_gpu), S = static_cast<double>(w.seq_len);
  const double d = static_cast<double>(c.d_model), ab = 2.0;
  const double wb = detail_perf::weight_bytes_per_param(w.precision);
  const double d_attn = static_cast<double>(c.n_heads) * c.head_dim;
  const double kv = kv_elems_per_token(m);
  const int moe_layers = c.num_layers - c.num_dense_layers;

  ModelCost mc;
  mc.variant = v;
  mc.moe_layer = moe_layer_cost(m, hw, l, w, v);

  // Attention: 2 * params + 4 * S * d_attn FLOPs per token (QK^T and AV over a context of S,
  // no causal discount); decode reads each sequence's KV cache of S tokens.
  const double p_attn = attention_params(m);
  const double f_attn = T * (2 * p_attn + 4 * S * d_attn);
  double b_attn = p_attn * wb + ab * T * (4 * d + 4 * d_attn) + ab * T * kv;
  if (w.mode == Mode::decode) b_attn += ab * T * S * kv;
  mc.t_attention = dense_time(hw, w, f_attn, b_attn);

  if (c.num_dense_layers > 0) {
    const double dff = static_cast<double>(c.d_dense_ff);
    mc.t_dense_ffn = dense_time(hw, w, T * expert_flops_per_token(c.d_model, c.d_dense_ff, gated),
                                (gated ? 3 : 2) * d * dff * wb + ab * T * (2 * d + 6 * dff));
  }
  // LM head: every token in training and decode, the last token of each sequence in prefill.
  const double head_tokens = w.mode == Mode::prefill ? std::max(1.0, T / S) : T;
  mc.t_head = dense_time(hw, w, 2 * head_tokens * d * c.vocab, d * c.vocab * wb + 4 * head_tokens * c.vocab);

  const ParamCount pc = count_params(m);
  const double p_local = pc.experts / l.ep + pc.replicated;
  if (w.mode == Mode::training) {
    // Gradient all-reduce (bf16) of each parameter over its data-parallel group: replicated
    // parameters over all GPUs, experts over the dp copies. Inside a node over NVLink;
    // across nodes hierarchically (reduce-scatter in the node, the 1/g shard over the network).
    const double g = std::min(l.num_gpus, hw.gpus_per_node);
    const double nodes = std::max(1.0, static_cast<double>(l.num_gpus) / hw.gpus_per_node);
    const double bytes_rep = 2.0 * pc.replicated, bytes_exp = l.dp() > 1 ? 2.0 * pc.experts / l.ep : 0;
    const double nvlink = hw.nvlink_gbps / 2 * 1e9 * hw.comm_efficiency;
    const double net = hw.network_gbps * 1e9 * hw.comm_efficiency;
    const double in_node = 2 * (bytes_rep + bytes_exp) * (g - 1) / g / nvlink;
    const double across = nodes > 1 ? 2 * (bytes_rep + bytes_exp) / g * (nodes - 1) / nodes / net : 0;
    mc.t_grad_sync = l.num_gpus > 1 ? std::max(in_node, across) : 0;
  }

  mc.t_block = mc.t_attention + mc.moe_layer.t_total;
  mc.t_step = moe_layers * mc.t_block + c.num_dense_layers * (mc.t_attention + mc.t_dense_ffn) +
              mc.t_head + mc.t_grad_sync;
  mc.tokens_per_step = T * l.num_gpus;
  mc.tokens_per_second = mc.tokens_per_step / mc.t_step;
  mc.tokens_per_day = tokens_per_day(mc.tokens_per_second);
  const double cf = detail_perf::compute_factor(w);
  mc.flops_per_step_gpu = cf * (moe_layers * (mc.moe_layer.flops / cf + f_attn) +
                           c.num_dense_layers * (f_attn + T * expert_flops_per_token(c.d_model, c.d_dense_ff, gated)) +
                           2 * head_tokens * d * c.vocab);

  // Memory per GPU.
  const double moe_tok = moe_act_per_token(c, v.fused_io, w.imbalance);
  mc.moe_activation_bytes_per_layer = T * moe_tok;
  MemoryUse& mem = mc.memory;
  if (w.mode == Mode::training) {
    // bf16 weights and gradients; Adam m, v and an fp32 master copy (12 bytes/param); ZeRO
    // shards them over each parameter's data-parallel group by stage. Activations of every layer are kept
    // for the backward (no recomputation): attention block input, q, k, v, output and two norm
    // inputs = 3d + 4 d_attn elements per token, the MoE layer as above, dense FFN d + 3 d_ff,
    // fp32 logits.
    const double p_sharded = pc.experts / l.ep / l.dp() + pc.replicated / l.num_gpus;
    // ZeRO-3 gathers one layer's replicated weights at a time on top of its shard.
    const double p_layer = pc.replicated / c.num_layers;
    mem.weights = 2.0 * (l.zero_stage >= 3 ? p_sharded + p_layer : p_local);
    mem.gradients = 2.0 * (l.zero_stage >= 2 ? p_sharded : p_local);
    mem.optimizer = 12.0 * (l.zero_stage >= 1 ? p_sharded : p_local);
    const double attn_tok = ab * (3 * d + 4 * d_attn);
    const double dense_tok = ab * (d + 3.0 * c.d_dense_ff);
    if (w.recompute)  // layer inputs, plus one layer's activations while it is recomputed
      mem.activations = T * (c.num_layers * ab * d + std::max({attn_tok + moe_tok, attn_tok + dense_tok}) +
                             4.0 * c.vocab);
    else
      mem.activations = T * (c.num_layers * attn_tok + moe_layers * moe_tok +
                             c.num_dense_layers * dense_tok + 4.0 * c.vocab);
  } else {
    // Inference holds one layer's activations at a time plus the logits it returns.
    mem.weights = wb * p_local;
    mem.activations = std::max(T * moe_tok, T * ab * (3 * d + 4 * d_attn)) + 4.0 * head_tokens * c.vocab;
    // KV cache: decode holds T sequences of S tokens; prefill writes the chunk's T tokens.
    mem.kv_cache = ab * kv * c.num_layers * (w.mode == Mode::decode ? T * S : T);
  }
  mc.capacity = hw.hbm_gb * 1e9;
  return mc;
}

static std::string gb(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GB", bytes / 1e9);
  return buf;
}

std::string fit_problem(const ModelCost& c, const Hardware& hw) {
  if (c.fits()) return "";
  const MemoryUse& m = c.memory;
  const double cap = c.capacity;
  if (m.weights > cap)
    return detail::concat("weights need ", gb(m.weights), " per GPU, ", gb(m.weights - cap),
                          " over the ", gb(cap), " of each ", hw.description);
  std::string parts = "weights " + gb(m.weights);
  if (m.gradients > 0) parts += " + gradients " + gb(m.gradients);
  if (m.optimizer > 0) parts += " + optimizer " + gb(m.optimizer);
  parts += " + activations " + gb(m.activations);
  if (m.kv_cache > 0) parts += " + KV cache " + gb(m.kv_cache);
  return detail::concat("memory per GPU: ", parts, " = ", gb(m.total()), ", ", gb(m.total() - cap),
                        " over the ", gb(cap), " of each ", hw.description, " (variant ", c.variant.name, ")");
}

void check_fits(const ModelCost& c, const Hardware& hw) {
  const std::string p = fit_problem(c, hw);
  if (!p.empty()) throw InvalidArgument(p);
}

int smallest_fitting_num_gpus(const ModelSpec& m, const Hardware& hw, const Workload& w,
                              const Variant& v, int zero_stage, int max_gpus) {
  std::vector<int> candidates;
  for (int g = 1; g < hw.gpus_per_node; g *= 2) candidates.push_back(g);
  for (int g = hw.gpus_per_node; g <= max_gpus; g += hw.gpus_per_node) candidates.push_back(g);
  for (int g : candidates) {
    const Layout l{g, default_ep(g, m.moe.num_experts), zero_stage};
    if (model_cost(m, hw, l, w, v).fits()) return g;
  }
  return 0;
}

}  // namespace tilemoe::perf
