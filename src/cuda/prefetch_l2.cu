// Decode sizes: an L2 prefetch of the expert weights the GEMMs read first, issued before the
// router. At decode sizes the layer's time is the streaming of the touched experts' weights, and
// DRAM idles while the router, top-k and metadata kernels run (~25-40 us); the prefetch fills L2
// meanwhile with the first experts' up-projection weights (the fused kernels walk their tiles
// expert by expert there, so the first wave reads those), and their loads then hit L2.
// Asynchronous: the kernel issues bulk prefetches (cp.async.bulk.prefetch.L2) and exits; nothing
// waits for them, and no data changes. How many bytes: heuristics.hpp decode_prefetch_bytes.
#include <algorithm>

#include "check.cuh"
#include "context.cuh"
#include "ptx/pipeline.cuh"
#include "stages.hpp"

namespace tilemoe::detail::gpu {
namespace {

constexpr std::uint32_t kPrefetchChunk = 16384;  // bytes per instruction

// Thread i of the grid issues the prefetches of chunks i, i + threads, ... of [p, p + bytes).
__global__ void prefetch_l2_kernel(const char* __restrict__ p, std::uint64_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const std::uint64_t threads = std::uint64_t(gridDim.x) * blockDim.x;
  for (std::uint64_t off = (std::uint64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kPrefetchChunk; off < bytes;
       off += threads * kPrefetchChunk) {
    const std::uint64_t left = bytes - off;
    ptx::bulk_prefetch_l2(p + off, static_cast<std::uint32_t>(left < kPrefetchChunk ? left : kPrefetchChunk));
  }
#endif
}

}  // namespace

void prefetch_l2(const void* p, std::size_t bytes) {
  // Whole 16-byte granules from a 16-byte aligned start (the weights are allocated aligned).
  if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return;
  bytes &= ~std::size_t(15);
  if (bytes == 0 || device_props().cc_major < 9) return;
  // A warp per SM at most: the prefetches spread over the SMs' TMA units.
  const std::uint64_t chunks = (bytes + kPrefetchChunk - 1) / kPrefetchChunk;
  const auto blocks = static_cast<unsigned>(std::min<std::uint64_t>((chunks + 31) / 32, device_props().sm_count));
  prefetch_l2_kernel<<<blocks, 32, 0, current_stream()>>>(static_cast<const char*>(p), bytes);
  TILEMOE_CHECK_LAUNCH();
}

}  // namespace tilemoe::detail::gpu
