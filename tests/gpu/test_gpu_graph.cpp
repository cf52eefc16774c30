// The grouped forward has no host synchronization: it can be captured in a CUDA graph on the
// library's stream (cudaStreamPerThread) and replayed, giving the same result as eager calls,
// also after new tokens are copied into the captured input buffer; with moe_forward_into, into
// an output buffer of the caller's.
#include <cstring>
#include <string>

#include "gpu_test_util.hpp"

#if TILEMOE_WITH_CUDA
#include <cuda_runtime.h>
#endif

using namespace tilemoe;

#if TILEMOE_WITH_CUDA
#define CK(call) ASSERT_EQ((call), cudaSuccess) << #call

TEST(GpuGraph, CaptureAndReplayGroupedForward) {
  TILEMOE_REQUIRE_GPU();
  for (Algorithm alg : {Algorithm::grouped, Algorithm::fused})
  for (const char* name : {"tiny-deepseek", "small"})
  for (bool into : {false, true}) {  // into: the output in a buffer allocated before the capture
    SCOPED_TRACE(std::string(name) + " " + to_string(alg) + (into ? " moe_forward_into" : ""));
    ForwardOptions opt;
    opt.algorithm = alg;
    const MoeConfig& c = preset(name);
    const std::uint64_t seed = test::fresh_seed();
    const MoeWeights w = random_weights(c, DType::bf16, seed).to(Device::cuda);
    const std::int64_t T = 300;
    const Tensor x1 = random_tokens(T, c.d_model, DType::bf16, seed + 1).to(Device::cuda);
    const Tensor x2 = random_tokens(T, c.d_model, DType::bf16, seed + 2).to(Device::cuda);
    Tensor x = x1.clone();
    const Tensor eager1 = moe_forward(c, w, x1, opt);  // also warms up: scratch, handles, kernels
    const Tensor eager2 = moe_forward(c, w, x2, opt);

    cudaStream_t s = cudaStreamPerThread;
    cudaGraph_t graph = nullptr;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
    const Tensor static_out = into ? Tensor::empty({T, c.d_model}, DType::bf16, Device::cuda) : Tensor();
    Tensor out;
    try {
      out = into ? moe_forward_into(c, w, x, static_out, opt) : moe_forward(c, w, x, opt);
    } catch (...) {
      cudaStreamEndCapture(s, &graph);
      throw;
    }
    CK(cudaStreamEndCapture(s, &graph));
    cudaGraphExec_t exec = nullptr;
    CK(cudaGraphInstantiate(&exec, graph, 0));
    if (into) EXPECT_EQ(out.raw(), static_out.raw());

    CK(cudaMemsetAsync(out.raw(), 0xff, out.nbytes(), s));  // NaNs in bf16
    CK(cudaGraphLaunch(exec, s));
    CK(cudaStreamSynchronize(s));
    const auto a = out.to_floats(), b = eager1.to_floats();
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << "replay differs from eager";

    CK(cudaMemcpyAsync(x.raw(), x2.raw(), x.nbytes(), cudaMemcpyDeviceToDevice, s));
    CK(cudaMemsetAsync(out.raw(), 0xff, out.nbytes(), s));
    CK(cudaGraphLaunch(exec, s));
    CK(cudaStreamSynchronize(s));
    const auto a2 = out.to_floats(), b2 = eager2.to_floats();
    EXPECT_EQ(0, std::memcmp(a2.data(), b2.data(), a2.size() * sizeof(float))) << "replay on new x differs";

    CK(cudaGraphExecDestroy(exec));
    CK(cudaGraphDestroy(graph));
  }
}
#endif
