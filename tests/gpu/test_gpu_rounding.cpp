// Token rounding on the GPU against the CPU's round_routing on identical logits (every rule,
// tiles 64 / 128, ties in the probabilities, tiny T), and the forward with rounding against
// the float64 reference, grouped and sequential, also captured in a CUDA graph.
#include <algorithm>
#include <cstring>
#include <random>
#include <string>

#include "gpu_test_util.hpp"

#if TILEMOE_WITH_CUDA
#include <cuda_runtime.h>

#include "cuda/heuristics.hpp"
#include "cuda/stages.hpp"
#endif

using namespace tilemoe;

#if TILEMOE_WITH_CUDA
namespace {

template <class T>
std::vector<T> host(const Tensor& t, std::int64_t count) {
  Tensor h = t.to(Device::cpu);
  return std::vector<T>(h.data<T>(), h.data<T>() + count);
}

Routing gpu_round(const RouterConfig& rc, const std::vector<float>& logits, std::int64_t T, const RoundingOptions& opt) {
  namespace g = detail::gpu;
  const int E = rc.num_experts, K = rc.top_k, tile = g::grouped_tile_m();
  const std::int64_t A = T * K, cap = g::rounding_capacity(T, K, E, opt.tile);
  auto dev = [](std::int64_t n, DType t) { return Tensor::empty({std::max<std::int64_t>(n, 1)}, t, Device::cuda); };
  Tensor ld = Tensor::from_floats({T * E}, logits).to(Device::cuda);
  Tensor ids = dev(A, DType::i32), wts = dev(A, DType::f32), probs = dev(T * E, DType::f32);
  Tensor counts = dev(E, DType::i32), offs = dev(E + 1, DType::i64), tiles = dev(E + 1, DType::i32);
  Tensor sorted = dev(A, DType::i32), slot = dev(A, DType::i32), stok = dev(A, DType::i32);
  const std::size_t mb = g::metadata_scratch_bytes(A, E), rb = g::rounding_scratch_bytes(T, K, E, opt.tile);
  Tensor ms = dev(static_cast<std::int64_t>(mb), DType::i32), rs = dev(static_cast<std::int64_t>(rb), DType::i32);
  Tensor ex = dev(cap, DType::i32), we = dev(cap, DType::f32), tok = dev(cap, DType::i32), off = dev(T + 1, DType::i64),
         target = dev(E, DType::i32);
  g::router_topk(rc, ld.data<float>(), nullptr, T, ids.data<std::int32_t>(), wts.data<float>());
  g::router_probs(rc, ld.data<float>(), T, probs.data<float>());
  g::Metadata m{counts.data<std::int32_t>(), offs.data<std::int64_t>(), tiles.data<std::int32_t>(),
                sorted.data<std::int32_t>(), slot.data<std::int32_t>(), stok.data<std::int32_t>()};
  g::build_metadata(ids.data<std::int32_t>(), nullptr, K, A, E, tile, m, ms.raw(), mb);
  // The rounded routing's metadata, derived by round_routing, against build_metadata's sort of
  // the rounded routing: every array, unused slots included.
  Tensor counts2 = dev(E, DType::i32), offs2 = dev(E + 1, DType::i64), tiles2 = dev(E + 1, DType::i32);
  Tensor sorted2 = dev(cap, DType::i32), slot2 = dev(cap, DType::i32), stok2 = dev(cap, DType::i32);
  g::Metadata m2{counts2.data<std::int32_t>(), offs2.data<std::int64_t>(), tiles2.data<std::int32_t>(),
                 sorted2.data<std::int32_t>(), slot2.data<std::int32_t>(), stok2.data<std::int32_t>()};
  const bool derived = g::round_routing(opt, T, K, E, ids.data<std::int32_t>(), wts.data<float>(), probs.data<float>(),
                                        m, ex.data<std::int32_t>(), we.data<float>(), tok.data<std::int32_t>(),
                                        off.data<std::int64_t>(), target.data<std::int32_t>(), rs.raw(), rb, tile, &m2);
  EXPECT_TRUE(derived) << "rounded metadata derived up to 2^18 tokens";
  if (derived) {
    const std::size_t mb2 = g::metadata_scratch_bytes(cap, E);
    Tensor ms2 = dev(static_cast<std::int64_t>(mb2), DType::i32);
    Tensor counts3 = dev(E, DType::i32), offs3 = dev(E + 1, DType::i64), tiles3 = dev(E + 1, DType::i32);
    Tensor sorted3 = dev(cap, DType::i32), slot3 = dev(cap, DType::i32), stok3 = dev(cap, DType::i32);
    g::Metadata m3{counts3.data<std::int32_t>(), offs3.data<std::int64_t>(), tiles3.data<std::int32_t>(),
                   sorted3.data<std::int32_t>(), slot3.data<std::int32_t>(), stok3.data<std::int32_t>()};
    g::build_metadata(ex.data<std::int32_t>(), tok.data<std::int32_t>(), K, cap, E, tile, m3, ms2.raw(), mb2);
    EXPECT_EQ(host<std::int32_t>(counts2, E), host<std::int32_t>(counts3, E)) << "counts";
    EXPECT_EQ(host<std::int64_t>(offs2, E + 1), host<std::int64_t>(offs3, E + 1)) << "offsets";
    EXPECT_EQ(host<std::int32_t>(tiles2, E + 1), host<std::int32_t>(tiles3, E + 1)) << "tile_offsets";
    EXPECT_EQ(host<std::int32_t>(sorted2, cap), host<std::int32_t>(sorted3, cap)) << "sorted";
    EXPECT_EQ(host<std::int32_t>(slot2, cap), host<std::int32_t>(slot3, cap)) << "slot";
    EXPECT_EQ(host<std::int32_t>(stok2, cap), host<std::int32_t>(stok3, cap)) << "sorted_token";
  }
  Routing r;
  r.num_tokens = T;
  r.num_experts = E;
  r.token_offsets = host<std::int64_t>(off, T + 1);
  r.expert = host<std::int32_t>(ex, r.token_offsets.back());
  r.weight = host<float>(we, r.token_offsets.back());
  const auto toks = host<std::int32_t>(tok, r.token_offsets.back());
  for (std::int64_t t = 0; t < T; ++t)
    for (auto a = r.token_offsets[t]; a < r.token_offsets[t + 1]; ++a) EXPECT_EQ(toks[a], t);
  const auto ex_all = host<std::int32_t>(ex, cap);
  for (std::int64_t a = r.token_offsets.back(); a < cap; ++a) EXPECT_EQ(ex_all[a], E) << "unused slot " << a;
  return r;
}

}  // namespace

TEST(GpuRounding, MatchesCpuRoundRouting) {
  TILEMOE_REQUIRE_GPU();
  struct C { std::int64_t T; int E, K; bool ties; };
  for (const C& c : {C{1000, 16, 2, false}, C{3, 64, 4, false}, C{5000, 128, 8, false}, C{4000, 64, 8, true},
                     C{20000, 256, 8, false}, C{777, 37, 5, true},
                     C{45000, 32, 4, true}})  // > 32768 tokens: add_kernel without its key cache
    for (RoundingRule rule : {RoundingRule::nearest, RoundingRule::up, RoundingRule::down, RoundingRule::stochastic,
                              RoundingRule::balanced})
      for (int tile : {64, 128}) {
        if (test::sanitizing() && (c.T > 1000 || tile == 128)) continue;
        const std::uint64_t seed = test::fresh_seed();
        SCOPED_TRACE("T=" + std::to_string(c.T) + " E=" + std::to_string(c.E) + " K=" + std::to_string(c.K) + " " +
                     to_string(rule) + " tile=" + std::to_string(tile) + (c.ties ? " ties" : "") +
                     " seed=" + std::to_string(seed));
        RouterConfig rc;
        rc.num_experts = c.E;
        rc.top_k = c.K;
        std::mt19937_64 g(seed);
        std::normal_distribution<float> nd(0.0f, 1.5f);
        std::vector<float> logits(static_cast<std::size_t>(c.T * c.E));
        for (auto& v : logits) v = c.ties ? std::round(nd(g) * 2.0f) * 0.5f : nd(g);
        RoundingOptions opt;
        opt.rule = rule;
        opt.tile = tile;
        opt.seed = seed;
        const Routing cpu = round_routing(route(rc, logits.data(), c.T), router_probabilities(rc, logits.data(), c.T), opt);
        const Routing gpu = gpu_round(rc, logits, c.T, opt);
        ASSERT_EQ(gpu.token_offsets, cpu.token_offsets);
        ASSERT_EQ(gpu.expert, cpu.expert);
        double werr = 0;
        for (std::size_t i = 0; i < cpu.weight.size(); ++i)
          werr = std::max(werr, std::abs(double(gpu.weight[i]) - cpu.weight[i]) / std::max(1e-30, std::abs(double(cpu.weight[i]))));
        EXPECT_LT(werr, 1e-6);
      }
}

// The forward with rounding (tile 64, `rule`) of T tokens on presets small and tiny-deepseek, each
// algorithm, against the float64 reference on the rounded routing; check(trace, T) adds the
// case's own expectations.
template <class Check>
void rounded_forwards(std::int64_t T, RoundingRule rule, Check check) {
  for (const char* name : {"small", "tiny-deepseek"})
    for (Algorithm alg : {Algorithm::grouped, Algorithm::fused, Algorithm::sequential}) {
      const MoeConfig& c = preset(name);
      const std::uint64_t seed = test::fresh_seed();
      SCOPED_TRACE(std::string(name) + " " + to_string(alg) + " seed=" + std::to_string(seed));
      const MoeWeights wh = random_weights(c, DType::bf16, seed);
      const Tensor xh = random_tokens(T, c.d_model, DType::bf16, seed + 1);
      ForwardOptions opt;
      opt.algorithm = alg;
      opt.rounding = RoundingOptions{};
      opt.rounding->tile = 64;
      opt.rounding->rule = rule;
      ForwardTrace tr;
      // (from fresh workspaces into a poisoned output: a token the kernels skip shows)
      const Tensor out = test::fresh_forward(c, wh.to(Device::cuda), xh.to(Device::cuda), opt, &tr);
      ASSERT_TRUE(tr.rounding.has_value());
      check(tr, T);
      EXPECT_LT(test::forward_error(c, wh, xh, out, tr.routing), 1e-2);  // 0 vs 0 without shared experts
    }
}

TEST(GpuRounding, ForwardWithRoundingMatchesReference) {
  TILEMOE_REQUIRE_GPU();
  rounded_forwards(900, RoundingRule::nearest, [](const ForwardTrace& tr, std::int64_t T) {
    for (auto n : tr.counts) EXPECT_TRUE(n % 64 == 0 || n == T) << n;
    EXPECT_EQ(tr.rounding->assignments_after, tr.routing.num_assignments());
  });
}

// Rounding that drops every assignment (rule down, every expert below one tile: T K = 32 of
// small's and tiny-deepseek's assignments cannot fill a tile of 64): the expert kernels get no
// row tile at all, and each token's output is its shared experts' or zero.
TEST(GpuRounding, ForwardWhereRoundingDropsEveryAssignment) {
  TILEMOE_REQUIRE_GPU();
  rounded_forwards(8, RoundingRule::down, [](const ForwardTrace& tr, std::int64_t) {
    EXPECT_EQ(tr.routing.num_assignments(), 0);
    for (auto n : tr.counts) EXPECT_EQ(n, 0);
  });
}

TEST(GpuRounding, GraphCaptureWithRounding) {
  TILEMOE_REQUIRE_GPU();
  const MoeConfig& c = preset("small");
  const std::uint64_t seed = test::fresh_seed();
  const MoeWeights w = random_weights(c, DType::bf16, seed).to(Device::cuda);
  const Tensor x = random_tokens(500, c.d_model, DType::bf16, seed + 1).to(Device::cuda);
  ForwardOptions opt;
  opt.rounding = RoundingOptions{};
  const Tensor eager = moe_forward(c, w, x, opt);
  cudaStream_t s = cudaStreamPerThread;
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), cudaSuccess);
  Tensor out;
  try {
    out = moe_forward(c, w, x, opt);
  } catch (...) {
    cudaStreamEndCapture(s, &graph);
    throw;
  }
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaMemsetAsync(out.raw(), 0xff, out.nbytes(), s), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  const auto a = out.to_floats(), b = eager.to_floats();
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}
#endif
