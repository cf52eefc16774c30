// A DeepSeek-V3-sized layer on the GPU (d 7168, n 2048, E 256, K 8, 1 shared expert, sigmoid
// router with bias and 8 groups keeping 4, x 2.5): 22.5 GB of bf16 weights, filled by a fast
// multithreaded generator (random_weights would need ~90 GB of fp32 on the host), checked on a
// sample of tokens with a float64 reference that reads only the experts those tokens use.
#include <algorithm>
#include <cstring>
#include <thread>

#include "gpu_test_util.hpp"

#if TILEMOE_WITH_CUDA
#include <cuda_runtime.h>
#endif

using namespace tilemoe;

namespace {

// Uniform values with standard deviation sd from a counter-based hash, in parallel.
Tensor fast_random(Shape shape, float sd, std::uint64_t seed) {
  Tensor t = Tensor::empty(std::move(shape), DType::bf16);
  bf16* p = t.data<bf16>();
  const std::int64_t n = t.numel();
  const int threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i)
    pool.emplace_back([=] {
      const float scale = sd * 1.7320508f / 2147483648.0f;  // uniform(-sqrt3, sqrt3) * sd
      for (std::int64_t j = n * i / threads; j < n * (i + 1) / threads; ++j) {
        std::uint64_t z = seed + static_cast<std::uint64_t>(j) * 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        p[j] = bf16::from_float(static_cast<float>(static_cast<std::int32_t>(z >> 32)) * scale);
      }
    });
  for (auto& th : pool) th.join();
  return t;
}

}  // namespace

TEST(GpuForward, DeepSeekV3SizedLayer) {
  TILEMOE_REQUIRE_GPU();
#if TILEMOE_WITH_CUDA
  std::size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess || free_b < (std::size_t(30) << 30))
    GTEST_SKIP() << "needs 30 GB of free GPU memory for the 22.5 GB of weights";
#endif
  const MoeConfig& c = preset("deepseek-v3");
  const std::int64_t d = c.d_model, n = c.d_expert, ns = c.d_shared, T = 2048;
  const int E = c.num_experts;
  const std::uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  MoeWeights wh;
  wh.router = fast_random({E, d}, 1.0f / std::sqrt(float(d)), seed + 1).to(DType::f32);
  wh.router_bias = fast_random({E}, 0.01f, seed + 2).to(DType::f32);
  MoeWeights wd;
  wd.router = wh.router.to(Device::cuda);
  wd.router_bias = wh.router_bias.to(Device::cuda);
  {  // the big ones go to the device one at a time; only the host copies needed later stay
    Tensor w13 = fast_random({E, 2 * n, d}, 1.0f / std::sqrt(float(d)), seed + 3);
    wd.w13 = w13.to(Device::cuda);
    wh.w13 = w13;
  }
  wh.w2 = fast_random({E, d, n}, 1.0f / std::sqrt(float(n)), seed + 4);
  wd.w2 = wh.w2.to(Device::cuda);
  wh.shared_w13 = fast_random({1, 2 * ns, d}, 1.0f / std::sqrt(float(d)), seed + 5);
  wh.shared_w2 = fast_random({1, d, ns}, 1.0f / std::sqrt(float(ns)), seed + 6);
  wd.shared_w13 = wh.shared_w13.to(Device::cuda);
  wd.shared_w2 = wh.shared_w2.to(Device::cuda);
  const Tensor xh = random_tokens(T, d, DType::bf16, seed + 7);
  ForwardTrace tr;
  const Tensor out = moe_forward(c, wd, xh.to(Device::cuda), {}, &tr);
  const std::vector<float> o = out.to_floats();
  const std::vector<float> xf = xh.to_floats();

  // float64 reference of a few tokens, reading bf16 weights directly.
  const bf16* w13 = wh.w13.data<bf16>();
  const bf16* w2 = wh.w2.data<bf16>();
  const bf16* s13 = wh.shared_w13.data<bf16>();
  const bf16* s2 = wh.shared_w2.data<bf16>();
  auto expert = [&](const bf16* a13, const bf16* a2, std::int64_t nn, const float* xr, double scale, std::vector<double>& acc) {
    std::vector<double> act(nn);
    for (std::int64_t j = 0; j < nn; ++j) {
      double g = 0, u = 0;
      for (std::int64_t k = 0; k < d; ++k) {
        g += double(a13[j * d + k].to_float()) * xr[k];
        u += double(a13[(nn + j) * d + k].to_float()) * xr[k];
      }
      act[j] = g / (1.0 + std::exp(-g)) * u;
    }
    for (std::int64_t i = 0; i < d; ++i) {
      double s = 0;
      for (std::int64_t j = 0; j < nn; ++j) s += double(a2[i * nn + j].to_float()) * act[j];
      acc[i] += scale * s;
    }
  };
  double num = 0, den = 0;
  for (std::int64_t t : test::sample_tokens(T, 6, seed)) {
    std::vector<double> acc(d, 0.0);
    for (std::int64_t a = tr.routing.token_offsets[t]; a < tr.routing.token_offsets[t + 1]; ++a) {
      const std::int64_t e = tr.routing.expert[a];
      expert(w13 + e * 2 * n * d, w2 + e * d * n, n, xf.data() + t * d, tr.routing.weight[a], acc);
    }
    expert(s13, s2, ns, xf.data() + t * d, 1.0, acc);
    for (std::int64_t i = 0; i < d; ++i) {
      num += (o[t * d + i] - acc[i]) * (o[t * d + i] - acc[i]);
      den += acc[i] * acc[i];
    }
  }
  EXPECT_LT(std::sqrt(num / den), 1e-2);
  // Routing sanity: K distinct experts per token, all inside 4 of the 8 groups.
  for (std::int64_t t = 0; t < T; ++t) {
    std::vector<int> groups;
    for (std::int64_t a = tr.routing.token_offsets[t]; a < tr.routing.token_offsets[t + 1]; ++a)
      groups.push_back(tr.routing.expert[a] / (E / 8));
    std::sort(groups.begin(), groups.end());
    groups.erase(std::unique(groups.begin(), groups.end()), groups.end());
    ASSERT_LE(groups.size(), 4u);
  }
}
