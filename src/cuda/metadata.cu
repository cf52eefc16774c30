// Routing metadata on the GPU, without a host synchronization: per-expert counts (shared-memory
// histogram), exclusive scans of the counts and of their row tiles (one block), a stable radix
// sort of the assignments by expert (CUB) and the inverse map. Positions fit int32 (A < 2^31);
// row offsets into activations are int64.
#include <algorithm>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include "buffer.cuh"
#include "context.cuh"
#include "stages.hpp"

namespace tilemoe::detail::gpu {
namespace {

constexpr int kMaxExperts = 4096;

__global__ void histogram_kernel(const std::int32_t* __restrict__ expert, std::int64_t A, int E,
                                 std::int32_t* __restrict__ counts, std::int32_t* __restrict__ iota) {
  __shared__ std::int32_t h[kMaxExperts];
  for (int e = threadIdx.x; e < E; e += blockDim.x) h[e] = 0;
  __syncthreads();
  for (std::int64_t a = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; a < A;
       a += std::int64_t(gridDim.x) * blockDim.x) {
    const int e = expert[a];
    if (e < E) atomicAdd(&h[e], 1);  // e == E marks an unused slot (rounded routing)
    iota[a] = static_cast<std::int32_t>(a);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    if (h[e]) atomicAdd(&counts[e], h[e]);
}

constexpr int kScanThreads = 1024, kScanItems = kMaxExperts / kScanThreads;

__global__ void __launch_bounds__(kScanThreads) scan_kernel(const std::int32_t* __restrict__ counts, int E, int tile_m,
                                                           std::int64_t* __restrict__ offsets,
                                                           std::int32_t* __restrict__ tile_offsets) {
  using Scan64 = cub::BlockScan<long long, kScanThreads>;
  using Scan32 = cub::BlockScan<int, kScanThreads>;
  __shared__ typename Scan64::TempStorage t64;
  __shared__ typename Scan32::TempStorage t32;
  long long c[kScanItems];
  int tl[kScanItems];
  for (int i = 0; i < kScanItems; ++i) {
    const int e = threadIdx.x * kScanItems + i;
    c[i] = e < E ? counts[e] : 0;
    tl[i] = static_cast<int>((c[i] + tile_m - 1) / tile_m);
  }
  long long total = 0;
  int total_tiles = 0;
  Scan64(t64).ExclusiveSum(c, c, total);
  Scan32(t32).ExclusiveSum(tl, tl, total_tiles);
  for (int i = 0; i < kScanItems; ++i) {
    const int e = threadIdx.x * kScanItems + i;
    if (e < E) {
      offsets[e] = c[i];
      tile_offsets[e] = tl[i];
    }
  }
  if (threadIdx.x == 0) {
    offsets[E] = total;
    tile_offsets[E] = total_tiles;
  }
}

__global__ void inverse_kernel(const std::int32_t* __restrict__ sorted, const std::int32_t* __restrict__ token_of,
                               int K, std::int64_t A, std::int32_t* __restrict__ slot,
                               std::int32_t* __restrict__ sorted_token) {
  for (std::int64_t p = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; p < A;
       p += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int32_t a = sorted[p];
    slot[a] = static_cast<std::int32_t>(p);
    sorted_token[p] = token_of ? token_of[a] : a / K;
  }
}

__global__ void uniform_offsets_kernel(std::int64_t rows, int E, int tile_m, std::int64_t* offsets,
                                       std::int32_t* tile_offsets) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e <= E) {
    offsets[e] = rows * e;
    tile_offsets[e] = static_cast<std::int32_t>(((rows + tile_m - 1) / tile_m) * e);
  }
}

// Bits of the sort keys: experts 0..E-1 and the unused-slot marker E.
int end_bit(int E) {
  int b = 1;
  while ((1 << b) < E + 1) ++b;
  return b;
}

struct SortScratch {
  std::int32_t* keys_out;
  std::int32_t* iota;
  void* cub_temp;
  std::size_t cub_bytes;
};

SortScratch carve(void* base, std::int64_t A, int E) {
  std::size_t cub_bytes = 0;
  TILEMOE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, cub_bytes, static_cast<const std::int32_t*>(nullptr),
                                                     static_cast<std::int32_t*>(nullptr),
                                                     static_cast<const std::int32_t*>(nullptr),
                                                     static_cast<std::int32_t*>(nullptr), static_cast<int>(A), 0,
                                                     end_bit(E), current_stream()));
  Carver c(base);
  SortScratch s;
  s.keys_out = c.take<std::int32_t>(static_cast<std::size_t>(A));
  s.iota = c.take<std::int32_t>(static_cast<std::size_t>(A));
  s.cub_bytes = cub_bytes;
  s.cub_temp = c.take<unsigned char>(cub_bytes);
  return s;
}

}  // namespace

std::size_t metadata_scratch_bytes(std::int64_t A, int E) {
  SortScratch s = carve(nullptr, A, E);
  Carver c;
  c.take<std::int32_t>(static_cast<std::size_t>(A));
  c.take<std::int32_t>(static_cast<std::size_t>(A));
  c.take<unsigned char>(s.cub_bytes);
  return c.bytes();
}

void build_metadata(const std::int32_t* expert, const std::int32_t* token_of, int K, std::int64_t A, int E,
                    int tile_m, const Metadata& m, void* scratch, std::size_t scratch_bytes) {
  check_arg(E >= 1 && E <= kMaxExperts, "num_experts", E, "1 <= num_experts <= 4096 on the GPU");
  check_arg(A < (std::int64_t(1) << 31), "assignments", A, "< 2^31 on the GPU");
  check_arg(scratch_bytes >= metadata_scratch_bytes(A, E), "metadata scratch", scratch_bytes,
            "metadata_scratch_bytes(A, E)");
  cudaStream_t st = current_stream();
  TILEMOE_CUDA_CHECK(cudaMemsetAsync(m.counts, 0, sizeof(std::int32_t) * E, st));
  SortScratch s = carve(scratch, A, E);
  const int sms = device_props().sm_count;
  if (A > 0) {
    const int blocks = static_cast<int>(std::min<std::int64_t>((A + 1023) / 1024, sms * 4));
    histogram_kernel<<<blocks, 1024, 0, st>>>(expert, A, E, m.counts, s.iota);
    TILEMOE_CHECK_LAUNCH();
  }
  scan_kernel<<<1, kScanThreads, 0, st>>>(m.counts, E, tile_m, m.offsets, m.tile_offsets);
  TILEMOE_CHECK_LAUNCH();
  if (A == 0) return;
  TILEMOE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(s.cub_temp, s.cub_bytes, expert, s.keys_out, s.iota, m.sorted,
                                                     static_cast<int>(A), 0, end_bit(E), st));
  const int blocks = static_cast<int>(std::min<std::int64_t>((A + 255) / 256, sms * 16));
  inverse_kernel<<<blocks, 256, 0, st>>>(m.sorted, token_of, K, A, m.slot, m.sorted_token);
  TILEMOE_CHECK_LAUNCH();
}

void uniform_offsets(std::int64_t rows, int E, int tile_m, std::int64_t* offsets, std::int32_t* tile_offsets) {
  uniform_offsets_kernel<<<(E + 1 + 255) / 256, 256, 0, current_stream()>>>(rows, E, tile_m, offsets, tile_offsets);
  TILEMOE_CHECK_LAUNCH();
}

}  // namespace tilemoe::detail::gpu
