// The throughput model's formulas against hand-computed cases, its readers, and its errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>

#include "perf/json.hpp"  // internal headers (tests also see src/)
#include "perf/stage_model.hpp"
#include "tilemoe/error.hpp"
#include "tilemoe/perf_model.hpp"

using namespace tilemoe;
using namespace tilemoe::perf;

namespace {

// A card with round numbers: 100 TFLOP/s and 1 TB/s achievable, 400 GB/s NVLink (200 per
// direction), comm efficiency 0.5 -> 100 GB/s for an all-to-all.
Hardware round_card() {
  Hardware h;
  h.name = "round";
  h.description = "round card";
  h.bf16_tflops = 200; h.fp8_tflops = 400; h.hbm_gb = 80; h.hbm_tbps = 2; h.nvlink_gbps = 400;
  h.network_gbps = 10; h.gpus_per_node = 8;
  h.achievable_bf16_tflops = 100; h.achievable_hbm_tbps = 1; h.comm_efficiency = 0.5;
  return h;
}

// d 1024, n 512, E 8, K 2, SwiGLU, no shared experts, one layer.
ModelSpec small_model() {
  ModelSpec m;
  m.moe.name = "hand";
  m.moe.d_model = 1024; m.moe.d_expert = 512; m.moe.num_experts = 8; m.moe.top_k = 2;
  m.moe.num_layers = 1; m.moe.n_heads = 8; m.moe.n_kv_heads = 8; m.moe.head_dim = 128;
  m.moe.vocab = 1000;
  return m;
}

Variant plain(double eff, bool fused = false) { return {"v", eff, fused, false, "test"}; }

Workload prefill(std::int64_t t) {
  Workload w;
  w.mode = Mode::prefill;
  w.tokens_per_gpu = t;
  w.seq_len = 1024;
  return w;
}

std::string write_temp(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + name;
  std::ofstream(path) << text;
  return path;
}

template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(PerfFormula, SwigluExpertFlopsPerToken) {
  EXPECT_DOUBLE_EQ(expert_flops_per_token(7168, 2048, true), 2.0 * 3 * 7168 * 2048);  // 88,080,384
  EXPECT_DOUBLE_EQ(expert_flops_per_token(7168, 2048, true), 88080384.0);
  EXPECT_DOUBLE_EQ(expert_flops_per_token(1024, 4096, false), 2.0 * 2 * 1024 * 4096);
  // MoeConfig's own count agrees (K routed + shared experts).
  const MoeConfig& c = preset("deepseek-v3");
  EXPECT_DOUBLE_EQ(c.flops_per_token(), 9 * expert_flops_per_token(7168, 2048, true));
}

TEST(PerfFormula, DispatchBytes) {
  // 4096 tokens x 8 experts x 7168 x 2 bytes, 7 of 8 GPUs remote: 411,041,792 bytes.
  EXPECT_DOUBLE_EQ(dispatch_bytes(4096, 8, 7168, 8, 2.0), 411041792.0);
  EXPECT_DOUBLE_EQ(dispatch_bytes(4096, 8, 7168, 1, 2.0), 0.0);  // one GPU: nothing leaves
  EXPECT_DOUBLE_EQ(dispatch_bytes(10, 2, 100, 2, 1.0), 1000.0);
}

TEST(PerfFormula, ExpertsTouched) {
  EXPECT_DOUBLE_EQ(experts_touched(8, 2, 1, 1), 2.0);  // one token reaches exactly K experts
  EXPECT_NEAR(experts_touched(8, 2, 1, 1024), 8.0, 1e-9);
  EXPECT_NEAR(experts_touched(256, 8, 8, 1), 32 * (1 - std::pow(1 - 8.0 / 256, 8)), 1e-12);
}

TEST(PerfFormula, TokensPerDay) {
  EXPECT_DOUBLE_EQ(tokens_per_day(1e6), 8.64e10);
  EXPECT_DOUBLE_EQ(tokens_per_day(2000), 172.8e6);
}

TEST(PerfFormula, WinningBound) {
  EXPECT_EQ(winning_bound(2, 1, 0.5), Bound::compute);
  EXPECT_EQ(winning_bound(1, 2, 0.5), Bound::memory);
  EXPECT_EQ(winning_bound(1, 2, 3), Bound::network);
}

TEST(PerfFormula, AttentionParams) {
  ModelSpec m = small_model();
  m.moe.d_model = 4096; m.moe.n_heads = 32; m.moe.n_kv_heads = 8; m.moe.head_dim = 128;
  EXPECT_DOUBLE_EQ(attention_params(m), 4096.0 * 4096 + 2 * 4096.0 * 1024 + 4096.0 * 4096);
  EXPECT_DOUBLE_EQ(kv_elems_per_token(m), 2.0 * 8 * 128);
  // DeepSeek-V3 MLA: about 187M per layer, 576 cached elements per token.
  const ModelSpec ds = load_model("deepseek-v3");
  EXPECT_NEAR(attention_params(ds) / 1e6, 187.1, 0.5);
  EXPECT_DOUBLE_EQ(kv_elems_per_token(ds), 576.0);
}

TEST(PerfFormula, DeepSeekV3ParamCount) {
  const ParamCount p = count_params(load_model("deepseek-v3"));
  EXPECT_NEAR(p.total() / 1e9, 671.0, 671.0 * 0.01);          // published 671B
  EXPECT_NEAR(p.active_per_token / 1e9, 37.0, 37.0 * 0.03);   // published 37B activated
}

TEST(PerfLayer, ComputeBoundHandComputed) {
  // T 1024, ep 1: rows 2048; routed 2048 x 2*3*1024*512 = 6,442,450,944 FLOP; router
  // 2*1024*1024*8 = 16,777,216; at 100 TFLOP/s x 1.0: 64.59 us.
  // Weights: 8 experts x 3*1024*512 x 2 B + router 1024*8*2 = 25,182,208 B. Activations
  // (unfused, 5d + 6n per row): 2*(2048*8192 + 2*1024*1024) + 4*1024*8 = 37,781,504 B.
  // At 1 TB/s: 62.96 us < 64.59 us: compute wins, barely.
  const LayerCost l = moe_layer_cost(small_model(), round_card(), Layout{1, 1}, prefill(1024), plain(1.0));
  EXPECT_DOUBLE_EQ(l.flops_routed, 6442450944.0);
  EXPECT_DOUBLE_EQ(l.flops_router, 16777216.0);
  EXPECT_DOUBLE_EQ(l.flops, 6459228160.0);
  EXPECT_NEAR(l.weight_bytes, 25182208.0, 1e-3);
  EXPECT_DOUBLE_EQ(l.act_bytes, 37781504.0);
  EXPECT_NEAR(l.t_compute, 64.5922816e-6, 1e-12);
  EXPECT_NEAR(l.t_memory, 62.963712e-6, 1e-9);
  EXPECT_EQ(l.t_network, 0.0);
  EXPECT_EQ(l.bound, Bound::compute);
  EXPECT_DOUBLE_EQ(l.t_total, l.t_compute);
  // Fused IO: 3d + 2n per row: 2*(2048*4096 + 2*1024*1024) + 32768 = 21,004,288 B.
  const LayerCost f = moe_layer_cost(small_model(), round_card(), Layout{1, 1}, prefill(1024), plain(1.0, true));
  EXPECT_DOUBLE_EQ(f.act_bytes, 21004288.0);
  // Half the efficiency doubles the compute time.
  const LayerCost h = moe_layer_cost(small_model(), round_card(), Layout{1, 1}, prefill(1024), plain(0.5));
  EXPECT_NEAR(h.t_compute, 2 * l.t_compute, 1e-15);
}

TEST(PerfLayer, PerExpertHostLoopAndTileQuantization) {
  // The same layer as above with one GEMM pair per expert from a host loop: 8 experts, all with
  // tokens (1024 tokens x top-2 over 8 experts), 10 us each -> +80 us; 256 rows per expert
  // fill two 128-row tiles exactly, so the GEMM time is unchanged.
  Variant seq = plain(1.0);
  seq.per_expert_us = 10;
  const LayerCost a = moe_layer_cost(small_model(), round_card(), Layout{1, 1}, prefill(1024), seq);
  EXPECT_NEAR(a.t_compute, 64.5922816e-6 + 80e-6, 1e-9);
  // 1000 tokens: 250 rows per expert in 256 computed: efficiency x 250/256.
  const LayerCost b = moe_layer_cost(small_model(), round_card(), Layout{1, 1}, prefill(1000), seq);
  const LayerCost b0 = moe_layer_cost(small_model(), round_card(), Layout{1, 1}, prefill(1000), plain(1.0));
  EXPECT_NEAR(b.t_compute - 80e-6, b0.t_compute * 256.0 / 250.0, 1e-9);
}

TEST(PerfLayer, MemoryBoundAtSmallBatch) {
  // 16 tokens: 32 rows, 0.1 GFLOP (1 us) against the 25 MB of expert weights (25 us).
  const LayerCost l = moe_layer_cost(small_model(), round_card(), Layout{1, 1}, prefill(16), plain(1.0));
  EXPECT_EQ(l.bound, Bound::memory);
  EXPECT_GT(l.t_memory, 10 * l.t_compute);
}

TEST(PerfLayer, NetworkBoundAllToAll) {
  // ep 8 on one node: dispatch = combine = 1024*2*1024*2*7/8 = 3,670,016 B; at 200 GB/s x 0.5
  // per direction: 73.4 us for both, more than compute (~8 us) and memory.
  ModelSpec m = small_model();
  const LayerCost l = moe_layer_cost(m, round_card(), Layout{8, 8}, prefill(1024), plain(1.0));
  EXPECT_DOUBLE_EQ(l.dispatch_bytes, 3670016.0);
  EXPECT_DOUBLE_EQ(l.combine_bytes, 3670016.0);
  EXPECT_NEAR(l.t_network, 2 * 3670016.0 / 100e9, 1e-15);
  EXPECT_EQ(l.bound, Bound::network);
  EXPECT_NEAR(l.t_total, std::max(l.t_compute, l.t_memory) + l.t_network, 1e-15);
}

TEST(PerfLayer, TrainingCountsTheBackward) {
  Workload t = prefill(1024);
  t.mode = Mode::training;
  const LayerCost f = moe_layer_cost(small_model(), round_card(), Layout{1, 1}, prefill(1024), plain(1.0));
  const LayerCost b = moe_layer_cost(small_model(), round_card(), Layout{1, 1}, t, plain(1.0));
  EXPECT_NEAR(b.t_compute, 3 * f.t_compute, 1e-15);
  EXPECT_DOUBLE_EQ(b.flops, 3 * f.flops);
  t.recompute = true;
  EXPECT_NEAR(moe_layer_cost(small_model(), round_card(), Layout{1, 1}, t, plain(1.0)).t_compute,
              4 * f.t_compute, 1e-15);
}

TEST(PerfLayer, ImbalanceScalesTheBusiestGpu) {
  Workload w = prefill(1024);
  const LayerCost a = moe_layer_cost(small_model(), round_card(), Layout{8, 8}, w, plain(1.0));
  w.imbalance = 2.0;
  const LayerCost b = moe_layer_cost(small_model(), round_card(), Layout{8, 8}, w, plain(1.0));
  EXPECT_DOUBLE_EQ(b.flops_routed, 2 * a.flops_routed);
  EXPECT_DOUBLE_EQ(b.dispatch_bytes, 2 * a.dispatch_bytes);
  EXPECT_DOUBLE_EQ(b.flops_router, a.flops_router);  // the router sees the GPU's own tokens
  w.imbalance = 0.5;
  EXPECT_NE(error_of([&] { w.validate(); }).find("--imbalance = 0.5"), std::string::npos);
}

TEST(PerfLayer, Fp8UsesTheFp8RateAndRejectsCardsWithout) {
  Workload w = prefill(1024);
  w.precision = Precision::fp8;
  const LayerCost a = moe_layer_cost(small_model(), round_card(), Layout{1, 1}, prefill(1024), plain(1.0));
  const LayerCost b = moe_layer_cost(small_model(), round_card(), Layout{1, 1}, w, plain(1.0));
  EXPECT_NEAR(b.t_compute, a.t_compute / 2, 1e-15);  // fp8 peak 2x, same achieved share
  const std::string e = error_of([&] { moe_layer_cost(small_model(), load_hardware("a100"), Layout{1, 1}, w, plain(1.0)); });
  EXPECT_NE(e.find("no fp8"), std::string::npos) << e;
}

TEST(PerfModel, TokensPerDayArithmetic) {
  const ModelSpec m = load_model("sonic-7b");
  const ModelCost c = model_cost(m, load_hardware("h100"), Layout{8, 8}, prefill(8192), default_variants().back());
  EXPECT_DOUBLE_EQ(c.tokens_per_step, 8.0 * 8192);
  EXPECT_NEAR(c.tokens_per_second, c.tokens_per_step / c.t_step, 1e-6);
  EXPECT_NEAR(c.tokens_per_day, c.tokens_per_second * 86400, 1e-3);
  // The step is its parts: 32 MoE blocks + LM head (no dense layers, no gradient sync).
  EXPECT_NEAR(c.t_step, 32 * c.t_block + c.t_head, 1e-12);
}

TEST(PerfModel, VariantsOrderedAndDefaultsCited) {
  const auto v = default_variants();
  ASSERT_EQ(v.size(), 6u);
  const char* names[] = {"sequential", "grouped", "grouped+rounding", "fused_1stage", "fused", "fused+rounding"};
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(v[i].name, names[i]);
  EXPECT_DOUBLE_EQ(v.front().efficiency, kDenseEfficiency);  // cuBLAS per expert
  EXPECT_DOUBLE_EQ(v.front().per_expert_us, 28.0);             // + the host loop
  EXPECT_EQ(kernel_model(v.front()), nullptr);                 // sequential: host-loop model
  for (size_t i = 1; i < v.size(); ++i) {
    EXPECT_EQ(v[i].per_expert_us, 0.0);
    const KernelModel* k = kernel_model(v[i]);  // every one-launch default: the stage model
    ASSERT_NE(k, nullptr) << v[i].name;
    EXPECT_EQ(k->efficiency, v[i].efficiency);
    EXPECT_EQ(k->rounding, v[i].name.find("+rounding") != std::string::npos);
  }
  // IO overlap: the pipelined fused kernels against the same kernels with one stage.
  EXPECT_GT(v[4].efficiency, v[3].efficiency);
  EXPECT_LT(kernel_model(v[4])->tile_k0, kernel_model(v[1])->tile_k0);  // persistent: cheaper tiles
  for (const auto& x : v) EXPECT_FALSE(x.source.empty());
  EXPECT_NEAR(chapter_variants()[3].efficiency, 0.78 * 1.15, 1e-12);
}

TEST(PerfModel, MemoryDoesNotFitSaysByHowMuch) {
  const ModelSpec m = load_model("deepseek-v3");
  const Hardware h = load_hardware("h100");
  const ModelCost c = model_cost(m, h, Layout{8, 8}, prefill(8192), default_variants().back());
  EXPECT_FALSE(c.fits());
  const std::string e = error_of([&] { check_fits(c, h); });
  EXPECT_NE(e.find("weights need 197.7 GB per GPU, 117.7 GB over the 80.0 GB"), std::string::npos) << e;
  // Enough GPUs make it fit: the smallest such count fits, one node fewer does not.
  const int g = smallest_fitting_num_gpus(m, h, prefill(8192), default_variants().back());
  ASSERT_GT(g, 8);
  EXPECT_TRUE(model_cost(m, h, Layout{g, default_ep(g, 256)}, prefill(8192), default_variants().back()).fits());
  EXPECT_FALSE(model_cost(m, h, Layout{g - 8, default_ep(g - 8, 256)}, prefill(8192), default_variants().back()).fits());
}

TEST(PerfModel, TrainingMemoryZeroStages) {
  const ModelSpec m = load_model("sonic-7b");
  const Hardware h = load_hardware("h100");
  Workload w = prefill(4096);
  w.mode = Mode::training;
  const ParamCount p = count_params(m);
  Layout l{8, 8, 0};
  const double z0 = model_cost(m, h, l, w, default_variants()[0]).memory.optimizer;
  EXPECT_NEAR(z0, 12 * (p.experts / 8 + p.replicated), 1);
  l.zero_stage = 1;
  const MemoryUse z1 = model_cost(m, h, l, w, default_variants()[0]).memory;
  EXPECT_NEAR(z1.optimizer, 12 * (p.experts / 8 + p.replicated / 8), 1);
  EXPECT_NEAR(z1.gradients, 2 * (p.experts / 8 + p.replicated), 1);
  l.zero_stage = 2;
  EXPECT_NEAR(model_cost(m, h, l, w, default_variants()[0]).memory.gradients, 2 * (p.experts / 8 + p.replicated / 8), 1);
}

TEST(PerfErrors, BadInput) {
  const MoeConfig& c = preset("deepseek-v3");
  EXPECT_NE(error_of([] { load_hardware("h300"); }).find("h100, h100-pcie, h200, a100, b200"), std::string::npos);
  EXPECT_NE(error_of([] { load_model("gpt-5"); }).find("expected one of"), std::string::npos);
  EXPECT_NE(error_of([&] { validate_layout(Layout{0, 1}, c); }).find("--num-gpus = 0"), std::string::npos);
  EXPECT_NE(error_of([&] { validate_layout(Layout{8, 3}, c); }).find("a divisor of --num-gpus (8)"), std::string::npos);
  EXPECT_NE(error_of([&] { validate_layout(Layout{24, 24}, c); }).find("a divisor of the 256 experts"), std::string::npos);
  EXPECT_NE(error_of([&] { validate_layout(Layout{8, 8, 4}, c); }).find("--zero = 4"), std::string::npos);
  EXPECT_NE(error_of([] { parse_mode("serve"); }).find("prefill, decode or training"), std::string::npos);
  Workload w;
  w.tokens_per_gpu = 0;
  EXPECT_NE(error_of([&] { w.validate(); }).find("--batch-tokens = 0"), std::string::npos);
  EXPECT_EQ(default_ep(8, 256), 8);
  EXPECT_EQ(default_ep(24, 256), 8);
  EXPECT_EQ(default_ep(6, 8), 2);
}

TEST(PerfJson, ParsesTheSubset) {
  const json::Value v = json::parse(R"( {"a": [1, -2.5e3, true, false, null], "s": "x\"y\\z\n\u0041",
                                        "o": {"k": {}} , "e": []} )");
  ASSERT_TRUE(v.is(json::Value::Kind::object));
  const json::Value& a = v.at("a", "t");
  ASSERT_EQ(a.items.size(), 5u);
  EXPECT_DOUBLE_EQ(a.items[0].num, 1);
  EXPECT_DOUBLE_EQ(a.items[1].num, -2500);
  EXPECT_TRUE(a.items[2].b);
  EXPECT_TRUE(a.items[4].is(json::Value::Kind::null));
  EXPECT_EQ(v.at("s", "t").as_string("s"), "x\"y\\z\nA");
  EXPECT_TRUE(v.at("o", "t").at("k", "t").is(json::Value::Kind::object));
  EXPECT_TRUE(v.at("e", "t").items.empty());
  EXPECT_EQ(v.find("missing"), nullptr);
}

TEST(PerfJson, ErrorsNameThePlace) {
  EXPECT_NE(error_of([] { json::parse("{\"a\": 1,}"); }).find("line 1"), std::string::npos);
  EXPECT_NE(error_of([] { json::parse("{\"a\": \"open"); }).find("unterminated string"), std::string::npos);
  EXPECT_NE(error_of([] { json::parse("[1 2]"); }).find("expected ']'"), std::string::npos);
  EXPECT_NE(error_of([] { json::parse("{}\n x"); }).find("line 2"), std::string::npos);
  EXPECT_NE(error_of([] { json::parse("-"); }).find("expected a digit"), std::string::npos);
  EXPECT_NE(error_of([] { json::parse("{\"a\": 1}").at("b", "cfg"); }).find("missing member \"b\""), std::string::npos);
}

TEST(PerfBench, MeasuredEfficiencyFromBenchJson) {
  const BenchFile b = parse_bench_json(R"({"card": "NVIDIA H100 80GB HBM3", "date": "2026-11-27",
    "commit": "abc1234", "results": [
      {"config": "sonic-7b", "tokens": 8192, "variant": "grouped", "ms": 1.0, "tflops": 300},
      {"config": "sonic-7b", "tokens": 24576, "variant": "grouped", "ms": 2.0, "tflops": 371.5},
      {"config": "qwen3-30b-a3b", "tokens": 65536, "variant": "grouped", "ms": 9.0, "tflops": 100},
      {"config": "sonic-7b", "tokens": 24576, "variant": "torch_grouped_mm", "ms": 1.5, "tflops": 445.8}]})");
  EXPECT_EQ(b.card, "NVIDIA H100 80GB HBM3");
  ASSERT_EQ(b.results.size(), 4u);
  const auto v = variants_from_bench(b, load_hardware("h100"), "sonic-7b", default_variants());
  ASSERT_EQ(v.size(), default_variants().size() + 1);
  EXPECT_EQ(v[1].name, "grouped");
  EXPECT_TRUE(v[1].measured);
  EXPECT_DOUBLE_EQ(v[1].efficiency, 371.5 / 743);  // same config, most tokens
  EXPECT_FALSE(v[0].measured);                      // sequential: not in the file, default
  EXPECT_DOUBLE_EQ(v[0].efficiency, kDenseEfficiency);
  EXPECT_EQ(v.back().name, "torch_grouped_mm");  // a peer: appended, measured
  EXPECT_DOUBLE_EQ(v.back().efficiency, 0.6);
  EXPECT_NE(error_of([] { parse_bench_json(R"({"results": [{"config": "x", "tokens": 0, "variant": "g", "ms": 1, "tflops": 1}]})"); })
                .find("tokens = 0"), std::string::npos);
  EXPECT_NE(error_of([] { parse_bench_json(R"({"card": "x"})"); }).find("missing member \"results\""), std::string::npos);
}

TEST(PerfFiles, HardwareAndConfigFiles) {
  const std::string hw = write_temp("hw.txt", "# a tuned H100\nbase = h100\nhbm_gb = 94\nname = h100-nvl\n");
  const Hardware h = load_hardware(hw);
  EXPECT_EQ(h.name, "h100-nvl");
  EXPECT_DOUBLE_EQ(h.hbm_gb, 94);
  EXPECT_DOUBLE_EQ(h.achievable_bf16_tflops, 743);  // inherited: the peak did not change
  const std::string hj = write_temp("hw.json", R"({"name": "x", "bf16_tflops": 1000, "hbm_gb": 100,
      "hbm_tbps": 4, "nvlink_gbps": 800})");
  const Hardware x = load_hardware(hj);
  EXPECT_NEAR(x.achievable_bf16_tflops, 1000 * 743.0 / 989, 1e-9);  // derived, and said so
  EXPECT_NE(x.achievable_source.find("derived"), std::string::npos);
  EXPECT_NE(error_of([&] { load_hardware(write_temp("bad.txt", "bf16 = 3\n")); }).find("key 'bf16' unknown"),
            std::string::npos);
  EXPECT_NE(error_of([&] { load_hardware(write_temp("neg.txt", "base = h100\nhbm_gb = -1\n")); }).find("hbm_gb = -1"),
            std::string::npos);

  const std::string cfg = write_temp("mine.cfg", "base = deepseek-v3\nnum_experts = 128\nnum_layers = 30\n");
  const ModelSpec m = load_model(cfg);
  EXPECT_EQ(m.moe.name, "mine");
  EXPECT_EQ(m.moe.num_experts, 128);
  EXPECT_EQ(m.moe.d_model, 7168);
  EXPECT_TRUE(m.mla.enabled());
  const std::string cj = write_temp("c.json", R"({"d_model": 2048, "d_expert": 768, "num_experts": 128,
      "top_k": 8, "num_layers": 48, "n_heads": 32, "n_kv_heads": 4, "head_dim": 128, "vocab": 151936})");
  EXPECT_EQ(load_model(cj).moe.d_expert, 768);
  EXPECT_NE(error_of([&] { load_model(write_temp("k.cfg", "d_model = 1024\nexperts = 8\n")); }).find("key 'experts' unknown"),
            std::string::npos);
  EXPECT_NE(error_of([&] { load_model(write_temp("z.cfg", "d_model = 1024\nd_expert = 64\nnum_experts = 8\ntop_k = 9\n")); })
                .find("top_k = 9"), std::string::npos);
  EXPECT_NE(error_of([] { load_model("no/such/file.cfg"); }).find("no such file"), std::string::npos);
}

// ---- the stage model (src/perf/stage_model.hpp) --------------------------------------------

namespace {

// d 1024, n 512, SwiGLU, E 2, K 2: every token goes to both experts, so each expert gets
// exactly T rows and the tile counts are exact (no randomness to approximate).
ModelSpec both_experts_model() {
  ModelSpec m = small_model();
  m.moe.num_experts = 2;
  m.moe.top_k = 2;
  return m;
}

Variant default_named(const std::string& name) {
  for (const auto& v : default_variants())
    if (v.name == name) return v;
  ADD_FAILURE() << "no default variant " << name;
  return plain(1.0);
}

}  // namespace

TEST(PerfStage, BinomialTail) {
  // X ~ Bin(100, 1/2): P(X > 50) = 1 - Phi((50.5 - 50) / 5) = 1 - Phi(0.1) = 0.460172 (normal);
  // the exact sum is 0.460205.
  EXPECT_NEAR(binomial_tail_above(100, 0.5, 50), 0.460172, 1e-6);
  EXPECT_NEAR(binomial_tail_above(100, 0.5, 50), 0.460205, 1e-4);
  EXPECT_EQ(binomial_tail_above(300, 1.0, 256), 1.0);  // no variance: X = 300 exactly
  EXPECT_EQ(binomial_tail_above(300, 1.0, 300), 0.0);
}

TEST(PerfStage, ExpectedTilesHandComputed) {
  // Exact counts (K = E): 300 rows fill 3 tiles (300 > 0, > 128, > 256); after nearest rounding
  // 300 = 256 + 44 rounds down to 2 tiles, 330 = 256 + 74 rounds up to 3.
  EXPECT_DOUBLE_EQ(expected_tiles(300, 4, 4), 3.0);
  EXPECT_DOUBLE_EQ(expected_rounded_tiles(300, 4, 4), 2.0);
  EXPECT_DOUBLE_EQ(expected_rounded_tiles(330, 4, 4), 3.0);
  EXPECT_DOUBLE_EQ(expected_tiles(1024, 2, 2), 8.0);  // exact multiple: no padding
  EXPECT_DOUBLE_EQ(expected_rounded_tiles(64, 2, 2), 0.0);  // 64 rows: dropped
  // sonic-7b at T 24576: X ~ Bin(24576, 1/16), mean 1536 (12 tiles), sd 37.95. P(X > 128 j) is
  // ~1 up to j = 10, then 0.99961 (j 11), 0.49474 (j 12), 0.00035 (j 13): 12.4947 tiles, a
  // utilization of 1536 / (12.4947 x 128) = 96.0% (tilemoe demo measured 95.8% on this layer,
  // docs/gpu_runs.md run 18). Rounded: P(X > 128 j + 64) = ~1 to j 10, 0.9529, 0.0446: 11.998.
  EXPECT_NEAR(expected_tiles(24576, 8, 128), 12.4947, 5e-4);
  EXPECT_NEAR(1536 / (expected_tiles(24576, 8, 128) * 128), 0.9604, 1e-4);
  EXPECT_NEAR(expected_rounded_tiles(24576, 8, 128), 11.998, 2e-3);
  // deepseek-v3 at T 4096: mean 128 rows per expert, sd 11.14: 1 + P(X > 128) = 1.482 tiles;
  // rounding leaves one (P(X > 64) = 1, P(X > 192) = 0): a third fewer tiles.
  EXPECT_NEAR(expected_tiles(4096, 8, 256), 1.482, 1e-3);
  EXPECT_NEAR(expected_rounded_tiles(4096, 8, 256), 1.0, 1e-6);
}

TEST(PerfStage, TileEfficiency) {
  EXPECT_DOUBLE_EQ(tile_efficiency(1024, 310), 1024.0 / 1334);
  EXPECT_DOUBLE_EQ(tile_efficiency(512, 0), 1.0);
}

TEST(PerfStage, GlueHandComputed) {
  // T 1024, d 1024, E 2, K 2 on the round card (100 TFLOP/s, 1 TB/s).
  // Router: 3 x 2 x 1024 x 1024 x 2 = 12,582,912 FLOP at 100e12 x 0.28 = 0.449 us, against
  // 3 x 2 x 1024 x 1024 + 4 x 1024 x 2 = 6,299,648 B = 6.299648 us: memory bound.
  // Combine: 2 x 1024 x 2 x 1024 + 8 x 1024 x 2 + 2 x 1024 x 1024 = 6,307,840 B = 6.30784 us.
  // Fixed 100 us; rounding 175 us + 0.0192 ns x 1024 x 2.
  const GlueCost g = glue_cost(both_experts_model().moe, round_card(), 1024, true);
  EXPECT_NEAR(g.router, 6.299648e-6, 1e-15);
  EXPECT_NEAR(g.combine, 6.30784e-6, 1e-15);
  EXPECT_DOUBLE_EQ(g.fixed, 100e-6);
  EXPECT_NEAR(g.rounding, 175e-6 + 0.0192e-9 * 2048, 1e-15);
  EXPECT_NEAR(g.total(), g.router + g.combine + g.fixed + g.rounding, 1e-18);
  EXPECT_EQ(glue_cost(both_experts_model().moe, round_card(), 1024, false).rounding, 0.0);
  // A wide router is compute bound: E 256, d 7168, T 4096 on the round card: 3 x 2 x 4096 x
  // 7168 x 256 = 45.1 GFLOP at 28 TFLOP/s = 1.611 ms, against 176 MB = 0.18 ms.
  MoeConfig wide = both_experts_model().moe;
  wide.d_model = 7168; wide.num_experts = 256; wide.top_k = 8;
  EXPECT_NEAR(glue_cost(wide, round_card(), 4096, false).router, 3 * 2 * 4096.0 * 7168 * 256 / 28e12, 1e-15);
}

TEST(PerfStage, RoundingConstantsFitRun20) {
  // The rounding stages (rounding_probs + rounding_metadata + rounding, medians, ms) of H100
  // run 20 (3ed8419, docs/gpu_runs.md; d 1536, n 256): {E, T, ms}. The constants are the least-squares
  // fit of a + b T E to them, rounded (0.175 ms, 0.0192 ns), and within 9% of every point.
  const double pts[][3] = {{128, 16384, 0.022 + 0.039 + 0.147}, {128, 24576, 0.031 + 0.042 + 0.177},
                           {256, 16384, 0.037 + 0.050 + 0.154}, {256, 24576, 0.053 + 0.051 + 0.218},
                           {512, 16384, 0.068 + 0.055 + 0.189}, {512, 24576, 0.099 + 0.058 + 0.265}};
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const auto& p : pts) {
    const double x = p[0] * p[1], y = p[2] * 1e-3;
    sx += x; sy += y; sxx += x * x; sxy += x * y;
  }
  const double n = 6, b = (n * sxy - sx * sy) / (n * sxx - sx * sx), a = (sy - b * sx) / n;
  EXPECT_NEAR(a, kRoundingFixedSeconds, 0.5e-6);            // 0.17517 ms
  EXPECT_NEAR(b, kRoundingPerTokenExpertSeconds, 0.05e-12);  // 0.019182 ns
  MoeConfig c = load_model("sonic-7b").moe;
  for (const auto& p : pts) {
    c.num_experts = static_cast<int>(p[0]);
    const double r = glue_cost(c, load_hardware("h100"), p[1], true).rounding;
    EXPECT_NEAR(r / (p[2] * 1e-3), 1.0, 0.09) << "E " << p[0] << " T " << p[1];
  }
}

TEST(PerfStage, LayerHandComputed) {
  // T 1024, both experts: 8 tiles each, 2048 rows computed (= T K, no padding).
  // Up 2048 x 2 x 1024 x 1024 = 4,294,967,296 FLOP over a reduction of d 1024, down 2048 x 2 x
  // 512 x 1024 = 2,147,483,648 over n 512. fused (0.90, tile cost 310):
  // (4294967296 x 1334/1024 + 2147483648 x 822/512) / (100e12 x 0.90)
  //   = (5,595,201,536 + 3,447,717,888) / 9e13 = 100.476882 us.
  // Memory: weights 2 x 3 x 1024 x 512 x 2 + router 1024 x 2 x 2 = 6,295,552 B, activations
  // 2 x 2048 x (2 x 1024 + 2 x 512) = 12,582,912 B: 18.878464 us. Glue (above, no rounding):
  // 6.299648 + 6.30784 + 100 = 112.607488 us, added to both.
  const Variant fused = default_named("fused");
  const KernelModel* k = kernel_model(fused);
  ASSERT_NE(k, nullptr);
  ASSERT_EQ(k->efficiency, 0.90);
  ASSERT_EQ(k->tile_k0, 310);
  const LayerCost l = moe_layer_cost(both_experts_model(), round_card(), Layout{1, 1}, prefill(1024), fused);
  EXPECT_NEAR(l.t_compute, 100.476882e-6 + 112.607488e-6, 1e-11);
  EXPECT_NEAR(l.t_memory, 18.878464e-6 + 112.607488e-6, 1e-11);
  EXPECT_NEAR(l.weight_bytes, 6295552.0, 1e-3);
  EXPECT_EQ(l.bound, Bound::compute);
  EXPECT_DOUBLE_EQ(l.t_total, l.t_compute);
  // grouped (0.89, tile cost 570): (4294967296 x 1594/1024 + 2147483648 x 1082/512) / 8.9e13
  //   = (6,685,720,576 + 4,538,236,928) / 8.9e13 = 126.111882 us.
  const Variant grouped = default_named("grouped");
  ASSERT_EQ(kernel_model(grouped)->tile_k0, 570);
  EXPECT_NEAR(moe_layer_cost(both_experts_model(), round_card(), Layout{1, 1}, prefill(1024), grouped).t_compute,
              126.111882e-6 + 112.607488e-6, 1e-11);
  // The same efficiency given by a caller (not the default): the whole-layer model, as before.
  Variant mine = fused;
  mine.efficiency = 0.9000001;
  EXPECT_EQ(kernel_model(mine), nullptr);
}

TEST(PerfStage, RoundingCostsItsStageAndDropsSmallExperts) {
  // T 1000, both experts: 1000 rows = 896 + 104 rounds up to 1024 (8 tiles), the same 8 tiles
  // the padded GEMM computes: fused+rounding - fused = the rounding stage, 175 us + 0.0192 ns x
  // 1000 x 2.
  const ModelSpec m = both_experts_model();
  const Hardware h = round_card();
  const LayerCost f = moe_layer_cost(m, h, Layout{1, 1}, prefill(1000), default_named("fused"));
  const LayerCost r = moe_layer_cost(m, h, Layout{1, 1}, prefill(1000), default_named("fused+rounding"));
  EXPECT_NEAR(r.t_total - f.t_total, 175e-6 + 0.0192e-9 * 2000, 1e-12);
  // T 50: 50 rows round down to none: no GEMM and no expert weights, only the glue is left.
  const LayerCost s = moe_layer_cost(m, h, Layout{1, 1}, prefill(50), default_named("fused+rounding"));
  const GlueCost g = glue_cost(m.moe, h, 50, true);
  EXPECT_NEAR(s.t_compute, g.total(), 1e-15);
  EXPECT_NEAR(s.weight_bytes, 1024.0 * 2 * 2, 1e-9);  // the router's only
}

TEST(PerfStage, TrainingScalesStagesButNotRounding) {
  // Training: GEMMs and glue x 3 (x 4 with recompute); rounding once per forward.
  const ModelSpec m = both_experts_model();
  Workload t = prefill(1000);
  t.mode = Mode::training;
  const GlueCost g = glue_cost(m.moe, round_card(), 1000, true);
  for (const char* name : {"fused", "fused+rounding"}) {
    const Variant v = default_named(name);
    const double fwd = moe_layer_cost(m, round_card(), Layout{1, 1}, prefill(1000), v).t_compute;
    const double rounding = kernel_model(v)->rounding ? g.rounding : 0.0;
    t.recompute = false;
    EXPECT_NEAR(moe_layer_cost(m, round_card(), Layout{1, 1}, t, v).t_compute, 3 * fwd - 2 * rounding, 1e-12) << name;
    t.recompute = true;
    EXPECT_NEAR(moe_layer_cost(m, round_card(), Layout{1, 1}, t, v).t_compute, 4 * fwd - 2 * rounding, 1e-12) << name;
  }
}

TEST(PerfStage, WholeLayerEfficienciesStayWholeLayer) {
  // The chapter's, measured and callers' variants keep the whole-layer formula.
  for (const auto& v : chapter_variants()) EXPECT_EQ(kernel_model(v), nullptr) << v.name;
  EXPECT_EQ(kernel_model(plain(0.9)), nullptr);
  const BenchFile b = parse_bench_json(R"({"card": "H", "results": [
      {"config": "sonic-7b", "tokens": 24576, "variant": "fused", "ms": 1.5, "tflops": 300}]})");
  const auto v = variants_from_bench(b, load_hardware("h200"), "sonic-7b", default_variants());
  for (const auto& x : v) EXPECT_EQ(kernel_model(x) == nullptr, x.measured || x.name == "sequential") << x.name;
}

TEST(PerfStage, BenchNamesMapOntoModelVariants) {
  const auto d = default_variants();
  const auto c = chapter_variants();
  auto name = [](const Variant* v) { return v ? v->name : std::string("none"); };
  for (const char* same : {"sequential", "grouped", "grouped+rounding", "fused", "fused_1stage", "fused+rounding"})
    EXPECT_EQ(name(variant_for_bench(same, d)), same);
  EXPECT_EQ(name(variant_for_bench("fused_4stage", d)), "fused");  // IO overlap, 4 stages
  EXPECT_EQ(name(variant_for_bench("dense_cublas", d)), "none");
  EXPECT_EQ(name(variant_for_bench("torch_grouped_mm", d)), "none");
  EXPECT_EQ(name(variant_for_bench("scattermoe", d)), "none");
  // The chapter's names: rounding + IO overlap, and no IO overlap = grouped.
  EXPECT_EQ(name(variant_for_bench("fused+rounding", c)), "grouped+rounding+io_overlap");
  EXPECT_EQ(name(variant_for_bench("fused_1stage", c)), "grouped");
  EXPECT_EQ(name(variant_for_bench("fused_4stage", c)), "fused");
}
