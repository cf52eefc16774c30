// The analytical throughput model: what one MoE layer and the whole model cost on a given GPU and
// cluster (FLOPs, bytes, all-to-all traffic, the bound that wins, tokens/s, tokens/day, memory
// per GPU), for each expert-algorithm variant. Everything it returns is a prediction from
// first principles plus measured ceilings; docs/throughput.md gives the formulas and sources.
// Units: FLOP, bytes, seconds (SI, 1 GB = 1e9 bytes) unless a name says otherwise.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tilemoe/config.hpp"

namespace tilemoe::perf {

// ---- hardware -------------------------------------------------------------------------------

struct Hardware {
  std::string name;            // short name: "h100"
  std::string description;     // "NVIDIA H100 SXM5 80GB"
  double bf16_tflops = 0;      // datasheet peak, dense (no 2:4 sparsity)
  double fp8_tflops = 0;       // 0 where the card has no fp8 tensor cores
  double hbm_gb = 0;           // capacity
  double hbm_tbps = 0;         // datasheet bandwidth
  double nvlink_gbps = 0;      // per GPU, both directions summed (the datasheet convention)
  double network_gbps = 50;    // inter-node per GPU, one direction (InfiniBand NDR 400 Gb/s)
  int gpus_per_node = 8;
  // What a program reaches; predictions use these, never the peaks above.
  double achievable_bf16_tflops = 0;
  double achievable_hbm_tbps = 0;
  double comm_efficiency = 0.8;  // share of one-direction link bandwidth an all-to-all reaches
  std::string source;            // where the datasheet figures come from
  std::string achievable_source; // measured (card, date) or derived (how)
  void validate() const;         // throws InvalidArgument naming the field
  double achievable_fp8_tflops() const;  // fp8 peak scaled by the bf16 achievable/peak ratio
};

const std::vector<Hardware>& hardware_presets();
std::vector<std::string> hardware_names();
// A preset ("h100", "h100-pcie", "h200", "a100", "b200") or a file (JSON object or key=value
// lines with the field names above, optionally "base = h100" to start from a preset).
Hardware load_hardware(std::string_view name_or_file);

// ---- model ----------------------------------------------------------------------------------

// Multi-head latent attention (DeepSeek-V3, Kimi-K2); all zero for plain MHA/GQA.
struct MlaSpec {
  std::int64_t q_lora_rank = 0;
  std::int64_t kv_lora_rank = 0;
  std::int64_t rope_dim = 0;
  bool enabled() const { return kv_lora_rank > 0; }
};

struct ModelSpec {
  MoeConfig moe;
  MlaSpec mla;
};

// A preset name (tilemoe::preset, plus the MLA figures of the models that use it) or a file:
// JSON object or key=value lines with MoeConfig's field names (d_model, d_expert, num_experts,
// top_k, num_shared, d_shared, activation, num_layers, num_dense_layers, d_dense_ff, n_heads,
// n_kv_heads, head_dim, vocab, q_lora_rank, kv_lora_rank, rope_dim) and "base = PRESET".
ModelSpec load_model(std::string_view name_or_file);

// ---- workload, layout, variants -------------------------------------------------------------

enum class Mode { prefill, decode, training };
enum class Precision { bf16, fp8 };
enum class Bound { compute, memory, network };
const char* to_string(Mode m);
const char* to_string(Precision p);
const char* to_string(Bound b);
Mode parse_mode(std::string_view s);
Precision parse_precision(std::string_view s);

struct Layout {
  int num_gpus = 1;
  int ep = 1;  // expert-parallel degree; data parallel over num_gpus / ep
  // Training: ZeRO stage. Each parameter's data-parallel group (all GPUs for replicated
  // parameters, the dp copies for experts) shards 1: optimizer states, 2: + gradients,
  // 3: + weights. 0: nothing sharded.
  int zero_stage = 1;
  int dp() const { return num_gpus / ep; }
};
// Throws InvalidArgument for zero GPUs, an ep that does not divide num_gpus and num_experts, or
// a ZeRO stage outside 0..3.
void validate_layout(const Layout& l, const MoeConfig& c);
// The largest ep that divides both num_gpus and num_experts.
int default_ep(int num_gpus, int num_experts);

struct Workload {
  Mode mode = Mode::prefill;
  std::int64_t tokens_per_gpu = 8192;  // decode: sequences per GPU (one new token each)
  std::int64_t seq_len = 4096;         // context length (decode: KV cache length)
  Precision precision = Precision::bf16;
  // Training: activation checkpointing. Keep each layer's input only and run every layer's
  // forward again in the backward (compute and memory traffic x4 instead of x3, all-to-all x3).
  bool recompute = false;
  // Load imbalance: routed rows on the busiest GPU over the mean (1 = perfectly balanced). The
  // busiest GPU sets the pace: its expert compute, activation traffic, all-to-all receive
  // volume and activation memory scale by this factor.
  double imbalance = 1.0;
  void validate() const;
};

// One expert algorithm. efficiency: the share of the achievable GEMM rate the MoE layer reaches
// when compute bound; for the GPU library's one-launch defaults (grouped, fused, their +rounding
// forms, fused_1stage) it is the GEMM kernels' share on a long reduction, and the layer is the
// stage model's sum (router, metadata, rounding, GEMMs with a per-tile cost, combine:
// src/perf/stage_model.hpp, docs/throughput.md). fused_io: gather and SwiGLU fused into the GEMMs
// (less activation traffic and memory).
struct Variant {
  std::string name;
  double efficiency = 0;
  bool fused_io = false;
  bool measured = false;
  std::string source;
  // Per-expert GEMMs from a host loop (sequential): each local expert that gets tokens costs
  // this much host time, and the efficiency is scaled by the tile utilization of each expert's
  // rows (128-row tiles). 0: one launch for all experts.
  double per_expert_us = 0;
};
// The documented defaults, anchored on SonicMoE's measured H100 layer throughput.
std::vector<Variant> default_variants();
// The chapter's own assumptions (baseline 0.45, optimized 0.78, IO overlap x1.15).
std::vector<Variant> chapter_variants();
// Efficiency of attention projections, dense FFNs and the LM head (large dense GEMMs).
inline constexpr double kDenseEfficiency = 0.80;

// The JSON that bench_moe_variants writes.
struct BenchResult {
  std::string config;
  std::int64_t tokens = 0;
  std::string variant;
  double ms = 0;
  double tflops = 0;
};
struct BenchFile {
  std::string card, date, commit;
  std::vector<BenchResult> results;
};
BenchFile parse_bench_json(std::string_view text);
BenchFile read_bench_json(const std::string& path);
// Variants with measured efficiency (tflops / achievable bf16) where the file has them (the
// largest token count, of this config when present), defaults for the rest; measured names the
// model does not know (dense_cublas, torch_grouped_mm) are appended.
std::vector<Variant> variants_from_bench(const BenchFile& bench, const Hardware& hw,
                                         std::string_view config_name,
                                         std::vector<Variant> defaults);

// ---- formulas (exposed for tests) -----------------------------------------------------------

// FLOPs of one token through one expert: 2 * (3 gated | 2 plain) * d * n.
double expert_flops_per_token(std::int64_t d, std::int64_t n, bool gated);
// Bytes one GPU sends to dispatch its T tokens to K experts spread over ep GPUs (the share that
// leaves the GPU, no deduplication per node); the combine sends the same back.
double dispatch_bytes(std::int64_t tokens, int top_k, std::int64_t d, int ep, double elem_bytes);
// Expected experts on one GPU that receive at least one token (T tokens per GPU, ep GPUs).
double experts_touched(int num_experts, int top_k, int ep, std::int64_t tokens_per_gpu);
Bound winning_bound(double t_compute, double t_memory, double t_network);
double tokens_per_day(double tokens_per_second);
// Attention weights of one layer (MLA when spec.mla is set).
double attention_params(const ModelSpec& m);
// KV-cache elements per token per layer.
double kv_elems_per_token(const ModelSpec& m);

// ---- results --------------------------------------------------------------------------------

struct LayerCost {  // one MoE layer on one GPU, for the mode (training: forward + backward)
  double flops = 0, flops_routed = 0, flops_shared = 0, flops_router = 0;
  double weight_bytes = 0, act_bytes = 0;
  double dispatch_bytes = 0, combine_bytes = 0;
  double t_compute = 0, t_memory = 0, t_network = 0;
  double t_total = 0;  // max(compute, memory) + network (all-to-all not overlapped); for the
                       // stage-modelled variants the other stages add to both bounds
  Bound bound = Bound::compute;
};

struct MemoryUse {  // per GPU
  double weights = 0, gradients = 0, optimizer = 0, activations = 0, kv_cache = 0;
  double total() const { return weights + gradients + optimizer + activations + kv_cache; }
};

struct ParamCount {
  double experts = 0;      // routed experts, all layers
  double replicated = 0;   // everything else: attention, shared experts, routers, dense, embeddings
  double total() const { return experts + replicated; }
  double active_per_token = 0;
};
ParamCount count_params(const ModelSpec& m);

struct ModelCost {
  Variant variant;
  LayerCost moe_layer;
  double t_attention = 0;     // one attention block
  double t_dense_ffn = 0;     // one dense FFN (the dense layers)
  double t_head = 0;          // LM head
  double t_grad_sync = 0;     // training: gradient all-reduce per step
  double t_block = 0;         // attention + MoE layer
  double t_step = 0;          // the whole model, one step
  double tokens_per_step = 0; // all GPUs
  double tokens_per_second = 0;
  double tokens_per_day = 0;
  double flops_per_step_gpu = 0;
  double moe_activation_bytes_per_layer = 0;  // training: stored for backward; else transient
  MemoryUse memory;
  double capacity = 0;
  bool fits() const { return memory.total() <= capacity; }
};

ModelCost model_cost(const ModelSpec& m, const Hardware& hw, const Layout& l, const Workload& w,
                     const Variant& v);
LayerCost moe_layer_cost(const ModelSpec& m, const Hardware& hw, const Layout& l,
                         const Workload& w, const Variant& v);

// "" when it fits; else what does not fit and by how much ("weights need 93.4 GB per GPU,
// 13.4 GB over the 80 GB of an H100 SXM5 80GB").
std::string fit_problem(const ModelCost& c, const Hardware& hw);
// Throws InvalidArgument with fit_problem's text.
void check_fits(const ModelCost& c, const Hardware& hw);
// The smallest number of GPUs (a multiple of gpus_per_node, or fewer than one node) with which
// the variant fits, trying ep = default_ep; 0 if none up to max_gpus.
int smallest_fitting_num_gpus(const ModelSpec& m, const Hardware& hw, const Workload& w,
                              const Variant& v, int zero_stage = 1, int max_gpus = 4096);

}  // namespace tilemoe::perf
