// The grouped forward has no host synchronization: it can be captured in a CUDA graph on the
// library's stream (cudaStreamPerThread) and replayed, giving the same result as eager calls,
// also after new tokens are copied into the captured input buffer; with moe_forward_into, into
// an output buffer of the caller's, captured in thread-local mode (where a cudaMalloc or any
// other call that may synchronize fails the capture): nothing is allocated inside it.
#include <cstring>
#include <string>
#include <thread>

#include "gpu_test_util.hpp"

#if TILEMOE_WITH_CUDA
#include <cuda_runtime.h>
#endif

using namespace tilemoe;

#if TILEMOE_WITH_CUDA
#define CK(call) ASSERT_EQ((call), cudaSuccess) << #call

namespace {
// The work `run` queues on s, captured in `mode` and instantiated into *exec (the capture is
// ended also where run throws).
template <class F>
cudaError_t capture(cudaStream_t s, cudaStreamCaptureMode mode, F&& run, cudaGraphExec_t* exec) {
  cudaGraph_t graph = nullptr;
  if (const cudaError_t e = cudaStreamBeginCapture(s, mode); e != cudaSuccess) return e;
  try {
    run();
  } catch (...) {
    if (cudaStreamEndCapture(s, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
    throw;
  }
  if (const cudaError_t e = cudaStreamEndCapture(s, &graph); e != cudaSuccess) return e;
  const cudaError_t e = cudaGraphInstantiate(exec, graph, 0);
  cudaGraphDestroy(graph);
  return e;
}
}  // namespace

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
    const Tensor static_out = into ? Tensor::empty({T, c.d_model}, DType::bf16, Device::cuda) : Tensor();
    Tensor out;
    cudaGraphExec_t exec = nullptr;
    CK(capture(s, into ? cudaStreamCaptureModeThreadLocal : cudaStreamCaptureModeRelaxed,
               [&] { out = into ? moe_forward_into(c, w, x, static_out, opt) : moe_forward(c, w, x, opt); }, &exec));
    if (into) {
      EXPECT_EQ(out.raw(), static_out.raw());
    }

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
  }
}

// Replays stay valid after what may happen between them in a serving loop: the warm-up's output
// dropped inside the capture (its pool memory is freed after the capture, not inside it, which
// would fail the capture), and an eager forward on more tokens growing the thread's workspaces
// (the graph keeps reading the ones it was captured with; memcheck sees a read of a freed one).
// Then a thread-local capture during which the first capture's output (a cudaMalloc) is dropped.
// Each case on a thread of its own, whose workspaces start empty, so that the larger forward
// does grow them; on that thread's stream and on a caller's.
namespace {
void replays_after_drops_and_growth(const MoeConfig& c, const MoeWeights& w, const Tensor& x, const Tensor& x2,
                                    const Tensor& big, cudaStream_t caller, Algorithm alg) {
  const std::int64_t T = x.shape()[0];
  const cudaStream_t s = caller ? caller : cudaStreamPerThread;
  ForwardOptions opt;
  opt.algorithm = alg;
  opt.stream = caller;
  ForwardOptions plain;
  plain.algorithm = alg;
  const std::vector<float> ref = moe_forward(c, w, x, plain).to_floats(), ref2 = moe_forward(c, w, x2, plain).to_floats();
  Tensor xc = x.clone();  // the captured input
  Tensor out = moe_forward(c, w, xc, opt);  // the warm-up, its output from the pool on s
  CK(cudaStreamSynchronize(cudaStreamPerThread));
  CK(cudaStreamSynchronize(s));
  cudaGraphExec_t exec = nullptr;
  // (out = ...: drops the warm-up's output while s is captured)
  CK(capture(s, cudaStreamCaptureModeRelaxed, [&] { out = moe_forward(c, w, xc, opt); }, &exec));
  CK(cudaMemsetAsync(out.raw(), 0xff, out.nbytes(), s));
  CK(cudaGraphLaunch(exec, s));
  CK(cudaStreamSynchronize(s));
  EXPECT_EQ(out.to_floats(), ref) << "replay";
  // An eager forward on 8x the tokens (larger workspaces), then the replay on new tokens.
  const Tensor eager_big = moe_forward(c, w, big, opt);
  CK(cudaMemcpyAsync(xc.raw(), x2.raw(), xc.nbytes(), cudaMemcpyDeviceToDevice, s));
  CK(cudaMemsetAsync(out.raw(), 0xff, out.nbytes(), s));
  CK(cudaGraphLaunch(exec, s));
  CK(cudaStreamSynchronize(s));
  EXPECT_EQ(out.to_floats(), ref2) << "replay on new tokens after a larger eager forward";
  CK(cudaGraphExecDestroy(exec));  // (it writes into out: gone before out goes)
  const Tensor into = Tensor::empty({T, c.d_model}, DType::bf16, Device::cuda);
  CK(cudaStreamSynchronize(cudaStreamPerThread));  // (from the pool there, ready for s)
  // (out = ...: drops the first capture's output, a cudaMalloc, during a thread-local capture)
  CK(capture(s, cudaStreamCaptureModeThreadLocal, [&] { out = moe_forward_into(c, w, x, into, opt); }, &exec));
  CK(cudaMemsetAsync(out.raw(), 0xff, out.nbytes(), s));
  CK(cudaGraphLaunch(exec, s));
  CK(cudaStreamSynchronize(s));
  EXPECT_EQ(out.to_floats(), ref) << "thread-local capture after dropping a captured output";
  CK(cudaGraphExecDestroy(exec));
}
}  // namespace

TEST(GpuGraph, ReplaysAfterDropsAndGrowth) {
  TILEMOE_REQUIRE_GPU();
  const MoeConfig& c = preset("small");
  const std::uint64_t seed = test::fresh_seed();
  const MoeWeights w = random_weights(c, DType::bf16, seed).to(Device::cuda);
  const std::int64_t T = 300;
  const Tensor x = random_tokens(T, c.d_model, DType::bf16, seed + 1).to(Device::cuda);
  const Tensor x2 = random_tokens(T, c.d_model, DType::bf16, seed + 3).to(Device::cuda);
  const Tensor big = random_tokens(8 * T, c.d_model, DType::bf16, seed + 2).to(Device::cuda);
  cudaStream_t caller = nullptr;
  CK(cudaStreamCreateWithFlags(&caller, cudaStreamNonBlocking));
  for (cudaStream_t s : {static_cast<cudaStream_t>(nullptr), caller})
    for (Algorithm alg : {Algorithm::grouped, Algorithm::fused}) {
      SCOPED_TRACE(std::string(to_string(alg)) + (s ? " on a caller's stream" : " on the thread's stream"));
      std::thread([&] { replays_after_drops_and_growth(c, w, x, x2, big, s, alg); }).join();
    }
  CK(cudaStreamDestroy(caller));
}

// Forwards on the caller's streams (ForwardOptions::stream), two streams and the default one
// interleaved from one thread with no host wait between them: they share the thread's
// workspaces, so each must wait for the one before; the results equal eager forwards' bit for
// bit. Then a capture on a caller's stream into a static output, replayed there.
TEST(GpuStreams, ForwardsOnCallersStreams) {
  TILEMOE_REQUIRE_GPU();
  const MoeConfig& c = preset("small");
  const std::uint64_t seed = test::fresh_seed();
  const MoeWeights w = random_weights(c, DType::bf16, seed).to(Device::cuda);
  const std::int64_t T = 4096;
  const Tensor x1 = random_tokens(T, c.d_model, DType::bf16, seed + 1).to(Device::cuda);
  const Tensor x2 = random_tokens(T, c.d_model, DType::bf16, seed + 2).to(Device::cuda);
  cudaStream_t s1 = nullptr, s2 = nullptr;
  CK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  for (Algorithm alg : {Algorithm::grouped, Algorithm::fused, Algorithm::sequential}) {
    SCOPED_TRACE(to_string(alg));
    ForwardOptions opt;
    opt.algorithm = alg;
    const std::vector<float> ref1 = moe_forward(c, w, x1, opt).to_floats(), ref2 = moe_forward(c, w, x2, opt).to_floats();
    ForwardOptions o1 = opt, o2 = opt;
    o1.stream = s1;
    o2.stream = s2;
    std::vector<Tensor> outs;
    for (int round = 0; round < 3; ++round) {
      outs.push_back(moe_forward(c, w, x1, o1));
      outs.push_back(moe_forward(c, w, x2, o2));
      outs.push_back(moe_forward(c, w, x1, opt));
    }
    CK(cudaStreamSynchronize(s1));
    CK(cudaStreamSynchronize(s2));
    synchronize(Device::cuda);
    for (std::size_t i = 0; i < outs.size(); ++i)
      EXPECT_EQ(outs[i].to_floats(), i % 3 == 1 ? ref2 : ref1) << "forward " << i;
    // Read back with no wait for s2 (into a poisoned buffer, so that a copy before the forward
    // shows): the copy, on the thread's stream, comes after the forward.
    Tensor poisoned = Tensor::empty({T, c.d_model}, DType::bf16, Device::cuda);
    CK(cudaStreamSynchronize(cudaStreamPerThread));  // (its memory, from the pool there, ready for s2)
    CK(cudaMemsetAsync(poisoned.raw(), 0xff, poisoned.nbytes(), s2));
    EXPECT_EQ(moe_forward_into(c, w, x2, poisoned, o2).to_floats(), ref2) << "copied without a wait";
  }

  // Capture on s1 (warmed up there), replayed on s1 into a buffer of ours.
  ForwardOptions o1;
  o1.algorithm = Algorithm::fused;
  o1.stream = s1;
  const std::vector<float> ref = moe_forward(c, w, x2, {.algorithm = Algorithm::fused}).to_floats();
  moe_forward(c, w, x2, o1);  // the warm-up on s1 (its output freed there)
  Tensor x = x1.clone();
  Tensor out = Tensor::empty({T, c.d_model}, DType::bf16, Device::cuda);
  CK(cudaStreamSynchronize(s1));
  cudaGraphExec_t exec = nullptr;
  CK(capture(s1, cudaStreamCaptureModeRelaxed, [&] { moe_forward_into(c, w, x, out, o1); }, &exec));
  CK(cudaMemcpyAsync(x.raw(), x2.raw(), x.nbytes(), cudaMemcpyDeviceToDevice, s1));
  CK(cudaMemsetAsync(out.raw(), 0xff, out.nbytes(), s1));
  CK(cudaGraphLaunch(exec, s1));
  CK(cudaStreamSynchronize(s1));
  EXPECT_EQ(out.to_floats(), ref) << "replay on the caller's stream";
  CK(cudaGraphExecDestroy(exec));
  CK(cudaStreamDestroy(s1));
  CK(cudaStreamDestroy(s2));
}
#endif
