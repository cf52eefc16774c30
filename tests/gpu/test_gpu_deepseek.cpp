// A DeepSeek-V3-sized layer on the GPU (d 7168, n 2048, E 256, K 8, 1 shared expert, sigmoid
// router with bias and 8 groups keeping 4, x 2.5): 22.5 GB of bf16 weights (random_weights fills
// them on all cores, in bf16 directly), checked on a sample of tokens with a float64 reference
// that reads only the experts those tokens use. `grouped` and `fused` at T 2048 (about one row
// tile per expert: fused runs the decode-sized pair launch over staged rows) and T 8192 (fused's
// up-projection over gathered rows on the wgmma kernel at this d: heuristics.hpp
// fused_up_gathers_on_wgmma).
#include <algorithm>
#include <cstdio>
#include <cstring>

#include "gpu_test_util.hpp"

#if TILEMOE_WITH_CUDA
#include <cuda_runtime.h>
#endif

using namespace tilemoe;

TEST(GpuForward, DeepSeekV3SizedLayer) {
  TILEMOE_REQUIRE_GPU();
#if TILEMOE_WITH_CUDA
  std::size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess || free_b < (std::size_t(30) << 30))
    GTEST_SKIP() << "needs 30 GB of free GPU memory for the 22.5 GB of weights";
#endif
  const MoeConfig& c = preset("deepseek-v3");
  const std::int64_t d = c.d_model, n = c.d_expert, ns = c.d_shared;
  const int E = c.num_experts;
  const std::uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  const MoeWeights wh = random_weights(c, DType::bf16, seed);  // parallel, bf16 directly
  const MoeWeights wd = wh.to(Device::cuda);
  // float64 reference of one expert for one token, reading bf16 weights directly.
  auto expert = [&](const bf16* a13, const bf16* a2, std::int64_t nn, const float* xr, double scale,
                    std::vector<double>& acc) {
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
  const bf16* w13 = wh.w13.data<bf16>();
  const bf16* w2 = wh.w2.data<bf16>();
  const bf16* s13 = wh.shared_w13.data<bf16>();
  const bf16* s2 = wh.shared_w2.data<bf16>();
  for (const std::int64_t T : {2048, 8192}) {
    const Tensor xh = random_tokens(T, d, DType::bf16, seed + 7);
    const Tensor xd = xh.to(Device::cuda);
    const std::vector<float> xf = xh.to_floats();
    for (const Algorithm alg : {Algorithm::grouped, Algorithm::fused}) {
      ForwardOptions opt;
      opt.algorithm = alg;
      ForwardTrace tr;
      const Tensor out = moe_forward(c, wd, xd, opt, &tr);
      SCOPED_TRACE("T=" + std::to_string(T) + ": " + tr.path);
      std::printf("DeepSeek-V3-sized layer, T %lld: %s\n", static_cast<long long>(T), tr.path.c_str());
      if (test::is_hopper() && alg == Algorithm::fused) {
        if (T == 2048) EXPECT_NE(tr.path.find("both projections in one launch"), std::string::npos);
        if (T == 8192) EXPECT_NE(tr.path.find("up wgmma"), std::string::npos);
      }
      const std::vector<float> o = out.to_floats();
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
  }
}
