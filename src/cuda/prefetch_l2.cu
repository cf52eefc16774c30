// L2 prefetches of expert weights at decode sizes (heuristics.hpp decode_prefetch): a thread per
// weight row asks L2 for the row's first bytes with one bulk prefetch and the kernel ends; the
// memory system fetches them while the stages before the expert kernels (router, top-k,
// metadata) run, which otherwise leave DRAM idle.
#include "check.cuh"
#include "context.cuh"
#include "grouped_gemm.cuh"
#include "stages.hpp"

namespace tilemoe::detail::gpu {
namespace {

__global__ void prefetch_l2_kernel(const L2Region r) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const long long first = static_cast<long long>(blockIdx.x) * blockDim.x;
  prefetch_l2_rows(r, first, first + blockDim.x < r.rows ? first + blockDim.x : r.rows, threadIdx.x, blockDim.x);
#endif
}

}  // namespace

void prefetch_l2(const L2Region& r) {
  if (r.rows <= 0 || r.bytes == 0) return;
  constexpr int kThreads = 256;
  prefetch_l2_kernel<<<static_cast<unsigned>((r.rows + kThreads - 1) / kThreads), kThreads, 0, current_stream()>>>(r);
  TILEMOE_CHECK_LAUNCH();
}

void prefetch_up_weights(const std::uint16_t* w13, int E, std::int64_t n, std::int64_t d, std::size_t budget) {
  const DeviceProps& dp = device_props();
  if (dp.cc_major != 9 || dp.cc_minor != 0) return;  // the fused kernels' GPUs (bulk prefetch: sm_90)
  prefetch_l2(ws_first_wave(w13, true, E, n, d, budget));
}

}  // namespace tilemoe::detail::gpu
