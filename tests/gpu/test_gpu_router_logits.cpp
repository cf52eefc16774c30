// The GPU router logits (router.cu) against a float64 reference: both paths for bf16 x (the
// CUDA-core kernel up to router_small_tokens() tokens, vectorized where d % 4 == 0 and scalar
// otherwise (d 201), the split-weight tensor-core GEMM with three partial logits above), for fp32
// and bf16 router weights (one bf16 GEMM above; and fp32 x with a bf16 router, widened first), and
// the top-k and probabilities read from the partial logits against the same kernels fed the
// summed logits.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "gpu_test_util.hpp"

#if TILEMOE_WITH_CUDA
#include "cuda/heuristics.hpp"
#include "cuda/stages.hpp"
#endif

using namespace tilemoe;

#if TILEMOE_WITH_CUDA
namespace {

namespace g = tilemoe::detail::gpu;

MoeConfig layer(std::int64_t d, int E, int K) {
  MoeConfig c;
  c.name = "router-test";
  c.d_model = d;
  c.d_expert = 16;
  c.num_experts = E;
  c.top_k = K;
  return c;
}

template <class T>
std::vector<T> host(const Tensor& t) {
  Tensor h = t.to(Device::cpu);
  return std::vector<T>(h.data<T>(), h.data<T>() + h.numel());
}

// Summed logits [T, E] from the [T, parts * E] partial logits, added in the kernels' order.
std::vector<float> summed(const std::vector<float>& l, std::int64_t T, int E, int parts) {
  std::vector<float> s(static_cast<std::size_t>(T * E));
  for (std::int64_t t = 0; t < T; ++t)
    for (int e = 0; e < E; ++e) {
      const float* r = l.data() + t * parts * E;
      s[t * E + e] = parts == 1 ? r[e] : (r[e] + r[E + e]) + r[2 * E + e];
    }
  return s;
}

}  // namespace

TEST(GpuRouter, LogitsMatchFloat64Reference) {
  TILEMOE_REQUIRE_GPU();
  const std::int64_t small = g::router_small_tokens();
  for (auto [T, d, E] : {std::tuple<std::int64_t, std::int64_t, int>{1, 64, 8}, {7, 200, 37}, {5, 201, 9}, {64, 2048, 128},
                         {small, 72, 256}, {small + 1, 72, 256}, {2000, 1536, 128}, {300, 7168, 64}})
    for (bool w_bf16 : {false, true})
      for (bool x_bf16 : {true, false}) {
        if (!x_bf16 && !w_bf16) continue;  // the fp32 cuBLAS GEMM alone: the forward tests' fp32 path
        if (test::sanitizing() && T * d * E > (1 << 24)) continue;
        const std::uint64_t seed = test::fresh_seed();
        SCOPED_TRACE("T=" + std::to_string(T) + " d=" + std::to_string(d) + " E=" + std::to_string(E) +
                     " w_bf16=" + std::to_string(w_bf16) + " x_bf16=" + std::to_string(x_bf16) +
                     " seed=" + std::to_string(seed));
        MoeConfig c = layer(d, E, 1);
        MoeWeights w = random_weights(c, DType::bf16, seed);  // the router stays fp32
        if (w_bf16) w.router = w.router.to(DType::bf16);
        const Tensor x = random_tokens(T, d, x_bf16 ? DType::bf16 : DType::f32, seed + 1);
        const auto xf = x.to_floats();
        const auto wr = w.router.to_floats();

        const MoeWeights wd = w.to(Device::cuda);
        const Tensor xd = x.to(Device::cuda);
        const int parts = g::router_logit_parts(T, x_bf16, w_bf16);
        EXPECT_EQ(parts, T <= small || w_bf16 || !x_bf16 ? 1 : 3);
        Tensor logits = Tensor::empty({T * E * parts}, DType::f32, Device::cuda);
        const auto sb = static_cast<std::int64_t>(g::router_scratch_bytes(T, d, E, x_bf16, w_bf16));
        Tensor scratch = Tensor::empty({std::max<std::int64_t>(1, sb)}, DType::i32, Device::cuda);
        ASSERT_EQ(g::router_logits(xd.raw(), x_bf16, wd.router.raw(), w_bf16, T, d, E, logits.data<float>(),
                                   scratch.raw()),
                  parts);
        const auto got = summed(host<float>(logits), T, E, parts);

        double worst = 0;
        for (std::int64_t t = 0; t < T; ++t)
          for (int e = 0; e < E; ++e) {
            double ref = 0, mag = 0;
            for (std::int64_t k = 0; k < d; ++k) {
              const double p = double(xf[t * d + k]) * double(wr[e * d + k]);
              ref += p;
              mag += std::abs(p);
            }
            // fp32 accumulation over d terms: a few units of 2^-24 relative to sum |x w|.
            const double err = std::abs(double(got[t * E + e]) - ref) / (mag + 1e-30);
            worst = std::max(worst, err);
          }
        EXPECT_LT(worst, 2e-6) << "largest error relative to sum |x w|";

        // Decode sizes, bf16 x: the kernel reading a bf16 router computes what it computes from
        // an fp32 router holding the same values, bit for bit (the same fp32 operations in order).
        if (w_bf16 && x_bf16 && T <= small) {
          const Tensor wide = w.router.to(DType::f32).to(Device::cuda);
          Tensor lf = Tensor::empty({T * E}, DType::f32, Device::cuda);
          ASSERT_EQ(g::router_logits(xd.raw(), true, wide.raw(), false, T, d, E, lf.data<float>(), scratch.raw()), 1);
          const auto a = host<float>(logits), b = host<float>(lf);
          EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
        }
      }
}

TEST(GpuRouter, TopkAndProbsReadPartialLogits) {
  TILEMOE_REQUIRE_GPU();
  const std::int64_t T = g::router_small_tokens() + 100;
  for (RouterKind kind : {RouterKind::softmax_topk, RouterKind::topk_softmax, RouterKind::sigmoid_group_topk}) {
    const std::uint64_t seed = test::fresh_seed();
    SCOPED_TRACE(std::string(to_string(kind)) + " seed=" + std::to_string(seed));
    MoeConfig c = layer(256, 64, 4);
    c.router = kind;
    if (kind == RouterKind::sigmoid_group_topk) {
      c.n_groups = 8;
      c.topk_groups = 4;
      c.router_bias = true;
    }
    const RouterConfig rc = c.router_config();
    const MoeWeights w = random_weights(c, DType::bf16, seed).to(Device::cuda);
    const Tensor x = random_tokens(T, c.d_model, DType::bf16, seed + 1).to(Device::cuda);
    const int E = c.num_experts, K = c.top_k, parts = g::router_logit_parts(T, true);
    ASSERT_EQ(parts, 3);
    Tensor lp = Tensor::empty({T * E * parts}, DType::f32, Device::cuda);
    Tensor scratch = Tensor::empty({static_cast<std::int64_t>(g::router_scratch_bytes(T, c.d_model, E, true))}, DType::i32,
                                   Device::cuda);
    g::router_logits(x.raw(), true, w.router.raw(), false, T, c.d_model, E, lp.data<float>(), scratch.raw());
    const auto sum = summed(host<float>(lp), T, E, parts);
    Tensor ls = Tensor::from_floats({T * E}, sum).to(Device::cuda);
    const float* bias = c.router_bias ? w.router_bias.data<float>() : nullptr;
    Tensor ids_p = Tensor::empty({T * K}, DType::i32, Device::cuda), ids_s = Tensor::empty({T * K}, DType::i32, Device::cuda);
    Tensor w_p = Tensor::empty({T * K}, DType::f32, Device::cuda), w_s = Tensor::empty({T * K}, DType::f32, Device::cuda);
    Tensor pr_p = Tensor::empty({T * E}, DType::f32, Device::cuda), pr_s = Tensor::empty({T * E}, DType::f32, Device::cuda);
    g::router_topk(rc, lp.data<float>(), bias, T, ids_p.data<std::int32_t>(), w_p.data<float>(), parts);
    g::router_topk(rc, ls.data<float>(), bias, T, ids_s.data<std::int32_t>(), w_s.data<float>(), 1);
    g::router_probs(rc, lp.data<float>(), T, pr_p.data<float>(), parts);
    g::router_probs(rc, ls.data<float>(), T, pr_s.data<float>(), 1);
    // The same sums in the same order: bit-identical results.
    EXPECT_EQ(host<std::int32_t>(ids_p), host<std::int32_t>(ids_s));
    const auto a = host<float>(w_p), b = host<float>(w_s), pa = host<float>(pr_p), pb = host<float>(pr_s);
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(pa.data(), pb.data(), pa.size() * sizeof(float)));
    // The top-k pass writing the probabilities too (the forward with rounding): the same bits.
    Tensor pr_t = Tensor::empty({T * E}, DType::f32, Device::cuda);
    g::router_topk(rc, lp.data<float>(), bias, T, ids_s.data<std::int32_t>(), w_s.data<float>(), parts, pr_t.data<float>());
    const auto pt = host<float>(pr_t);
    EXPECT_EQ(0, std::memcmp(pt.data(), pa.data(), pa.size() * sizeof(float)));
    EXPECT_EQ(host<std::int32_t>(ids_s), host<std::int32_t>(ids_p));
  }
}

// The caller's routing taken on more tokens than take_routing's grid has threads (the grid is
// capped at 32 blocks of 256 per SM): every token copied, and a bad id past the cap found.
TEST(GpuRouter, TakeRoutingCoversEveryToken) {
  TILEMOE_REQUIRE_GPU();
  if (test::sanitizing()) GTEST_SKIP() << "large case";
  int dev = 0, sms = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), cudaSuccess);
  const std::int64_t T = std::int64_t(sms) * 32 * 256 + 1000, bad_t = T - 3;
  const int K = 2, E = 8;
  Tensor ids_h = Tensor::empty({T * K}, DType::i32), w_h = Tensor::empty({T * K}, DType::f32);
  for (std::int64_t t = 0; t < T; ++t)
    for (int k = 0; k < K; ++k) {
      ids_h.data<std::int32_t>()[t * K + k] = static_cast<std::int32_t>((t + k) % E);
      w_h.data<float>()[t * K + k] = 0.25f + static_cast<float>(t % 7) + static_cast<float>(k);
    }
  ids_h.data<std::int32_t>()[bad_t * K + 1] = E;  // out of range
  const Tensor ids_in = ids_h.to(Device::cuda), w_in = w_h.to(Device::cuda);
  Tensor ids = Tensor::empty({T * K}, DType::i32, Device::cuda), wts = Tensor::empty({T * K}, DType::f32, Device::cuda);
  Tensor bad = Tensor::empty({1}, DType::i32, Device::cuda);
  ASSERT_EQ(cudaMemset(ids.raw(), 0xff, ids.nbytes()), cudaSuccess);
  ASSERT_EQ(cudaMemset(wts.raw(), 0xff, wts.nbytes()), cudaSuccess);
  g::take_routing(ids_in.data<std::int32_t>(), w_in.data<float>(), T, K, E, ids.data<std::int32_t>(), wts.data<float>(),
                  bad.data<std::int32_t>());
  EXPECT_EQ(host<std::int32_t>(bad)[0], bad_t);
  const auto got_ids = host<std::int32_t>(ids);
  const auto got_w = host<float>(wts);
  std::int64_t wrong = 0, first = -1;
  for (std::int64_t a = 0; a < T * K; ++a) {
    const bool out_of_range = a == bad_t * K + 1;
    const std::int32_t want_id = out_of_range ? 0 : ids_h.data<std::int32_t>()[a];
    const float want_w = out_of_range ? 0.0f : w_h.data<float>()[a];
    if (got_ids[a] != want_id || got_w[a] != want_w) {
      if (first < 0) first = a;
      ++wrong;
    }
  }
  EXPECT_EQ(wrong, 0) << "first wrong assignment " << first << " (token " << first / K << " of " << T << ")";
}
#endif
