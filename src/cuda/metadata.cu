// Routing metadata on the GPU, without a host synchronization: per-expert counts (shared-memory
// histogram), exclusive scans of the counts and of their row tiles (one block), a stable radix
// sort of the assignments by expert (CUB) and the inverse map. Positions fit int32 (A < 2^31);
// row offsets into activations are int64. Small routings (decode) take a one-kernel path with
// the same outputs: a stable counting sort in one block.
#include <algorithm>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include "buffer.cuh"
#include "context.cuh"
#include "heuristics.hpp"
#include "stages.hpp"

namespace tilemoe::detail::gpu {
namespace {

constexpr int kMaxExperts = 4096;

// The one-block path's limits: metadata_one_block_max_assignments() and _max_experts()
// (heuristics.hpp).
constexpr std::int64_t kSmallMaxAssignments = metadata_one_block_max_assignments();
constexpr int kSmallMaxExperts = metadata_one_block_max_experts();

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

// The scans: one block of kScanThreads threads, kScanItems experts each; scan_threads(E) picks
// the smallest block that covers E (one warp at E <= 128: a block of 1024 took 5.6 us at E 128,
// most of it at its barriers, Nsight Compute, H200 run 91; the metadata stage 2-5 us shorter on
// the issue's layers, run 93).
constexpr int kScanItems = 4;
constexpr int scan_threads(int E) { return E <= 32 * kScanItems ? 32 : E <= 256 * kScanItems ? 256 : 1024; }
static_assert(1024 * kScanItems >= kMaxExperts, "the scans cover every expert");

template <int kScanThreads>
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

// The one-block kernel's shape: kThreads threads for up to kMaxA assignments (chunks of 32 per
// warp: kChunks; experts per thread in the scans: kCols); heuristics.hpp
// metadata_one_block_threads picks one.
template <int kThreads, int kMaxA>
struct SmallShape {
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kChunks = kMaxA / kThreads;
  static constexpr int kCols = (kSmallMaxExperts + 1 + kThreads - 1) / kThreads;
  using Scan = cub::BlockScan<int, kThreads, cub::BLOCK_SCAN_WARP_SCANS>;
};
using SmallBig = SmallShape<1024, static_cast<int>(kSmallMaxAssignments)>;
using SmallLittle = SmallShape<256, 2048>;

// The whole metadata in one block, as a stable counting sort. Warp w takes a contiguous segment of
// the assignments, 32 at a time; __match_any_sync groups a chunk's lanes by expert, so that the
// lowest lane of each group alone updates the warp's counter c[w][e] (no atomics), and a lane's
// rank is the number of its peers below it. Segments, chunks and lanes in order: stable. Column E
// counts the unused slots (expert id E), which thus follow offsets[E] in their order, as the
// general path's sort puts them (key E is the largest).
template <class Sh>
__global__ void __launch_bounds__(Sh::kWarps * 32) small_metadata_kernel(const std::int32_t* __restrict__ expert,
                                                                        const std::int32_t* __restrict__ token_of,
                                                                        int K, int A, int E, int tile_m, Metadata m) {
  constexpr int kSmallThreads = Sh::kWarps * 32, kSmallWarps = Sh::kWarps, kSmallChunks = Sh::kChunks,
                kSmallCols = Sh::kCols;
  using SmallScan = typename Sh::Scan;
  extern __shared__ int c[];  // [kSmallWarps][E + 1]: warp w's count of expert e, then its next position
  __shared__ typename SmallScan::TempStorage t_rows, t_tiles;
  const int cols = E + 1, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int chunks = (A + kSmallThreads - 1) / kSmallThreads;  // of 32, per warp; the last warps run past A
  const int begin = warp * chunks * 32;
  int* cw = c + warp * cols;
  for (int i = threadIdx.x; i < kSmallWarps * cols; i += kSmallThreads) c[i] = 0;
  // The warp's expert ids, read once into registers for both passes (-1: none).
  int ex[kSmallChunks];
#pragma unroll
  for (int i = 0; i < kSmallChunks; ++i) {
    const int a = begin + i * 32 + lane;
    ex[i] = i < chunks && a < A ? expert[a] : -1;
  }
  __syncthreads();
  // Pass 1: the warp's counts.
#pragma unroll
  for (int i = 0; i < kSmallChunks; ++i) {
    if (i >= chunks) break;  // uniform over the block
    const unsigned peers = __match_any_sync(0xffffffffu, ex[i]);
    if (ex[i] >= 0 && lane == __ffs(peers) - 1) cw[ex[i]] += __popc(peers);
    __syncwarp();  // the next chunk's leader of the same expert may be another lane
  }
  __syncthreads();
  // Per expert: the count over the warps, the scans, then each warp's first position in place of its count.
  int rows[kSmallCols], tiles[kSmallCols];
#pragma unroll
  for (int j = 0; j < kSmallCols; ++j) {
    const int e = threadIdx.x * kSmallCols + j;
    rows[j] = 0;
    if (e < cols)
      for (int w = 0; w < kSmallWarps; ++w) rows[j] += c[w * cols + e];
    tiles[j] = e < E ? (rows[j] + tile_m - 1) / tile_m : 0;
    if (e < E) m.counts[e] = rows[j];
  }
  SmallScan(t_rows).ExclusiveSum(rows, rows);
  SmallScan(t_tiles).ExclusiveSum(tiles, tiles);
#pragma unroll
  for (int j = 0; j < kSmallCols; ++j) {
    const int e = threadIdx.x * kSmallCols + j;
    if (e >= cols) continue;
    m.offsets[e] = rows[j];  // at e = E: the real assignments' total, where the unused slots start
    m.tile_offsets[e] = tiles[j];
    int next = rows[j];
    for (int w = 0; w < kSmallWarps; ++w) {
      const int n = c[w * cols + e];
      c[w * cols + e] = next;
      next += n;
    }
  }
  __syncthreads();
  // Pass 2: place each assignment at its warp's next position for its expert plus its rank.
#pragma unroll
  for (int i = 0; i < kSmallChunks; ++i) {
    if (i >= chunks) break;
    const int e = ex[i];
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const int leader = __ffs(peers) - 1;
    int pos = 0;
    if (e >= 0 && lane == leader) {
      pos = cw[e];
      cw[e] = pos + __popc(peers);
    }
    pos = __shfl_sync(0xffffffffu, pos, leader) + __popc(peers & ((1u << lane) - 1));
    if (e >= 0) {
      const int a = begin + i * 32 + lane;
      m.sorted[pos] = a;
      m.slot[a] = pos;
      m.sorted_token[pos] = token_of ? token_of[a] : a / K;
    }
    __syncwarp();
  }
}

template <class Sh>
std::size_t small_smem_bytes(int E) { return sizeof(int) * Sh::kWarps * (static_cast<std::size_t>(E) + 1); }

// The one-block path applies: small A, and the counters fit the device's shared memory.
bool small_path(std::int64_t A, int E) {
  return A <= kSmallMaxAssignments && E <= kSmallMaxExperts &&
         small_smem_bytes<SmallBig>(E) + 2 * sizeof(SmallBig::Scan::TempStorage) <= device_props().smem_optin;
}

template <class Sh>
void launch_small(const std::int32_t* expert, const std::int32_t* token_of, int K, std::int64_t A, int E, int tile_m,
                  const Metadata& m) {
  const std::size_t smem = small_smem_bytes<Sh>(E);
  if (smem > 48 * 1024)
    TILEMOE_CUDA_CHECK(cudaFuncSetAttribute(small_metadata_kernel<Sh>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem)));
  small_metadata_kernel<Sh><<<1, Sh::kWarps * 32, smem, current_stream()>>>(expert, token_of, K, static_cast<int>(A), E,
                                                                            tile_m, m);
  TILEMOE_CHECK_LAUNCH();
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
  if (small_path(A, E)) return 0;  // the one-block path needs none
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
  if (small_path(A, E)) {
    static_assert(SmallLittle::kChunks * 256 == 2048, "the 256-thread block takes what the heuristic gives it");
    if (metadata_one_block_threads(A) == 256) launch_small<SmallLittle>(expert, token_of, K, A, E, tile_m, m);
    else launch_small<SmallBig>(expert, token_of, K, A, E, tile_m, m);
    return;
  }
  TILEMOE_CUDA_CHECK(cudaMemsetAsync(m.counts, 0, sizeof(std::int32_t) * E, st));
  SortScratch s = carve(scratch, A, E);
  const int sms = device_props().sm_count;
  if (A > 0) {
    const int blocks = static_cast<int>(std::min<std::int64_t>((A + 1023) / 1024, sms * 4));
    histogram_kernel<<<blocks, 1024, 0, st>>>(expert, A, E, m.counts, s.iota);
    TILEMOE_CHECK_LAUNCH();
  }
  metadata_offsets(m.counts, E, tile_m, m.offsets, m.tile_offsets);
  if (A == 0) return;
  TILEMOE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(s.cub_temp, s.cub_bytes, expert, s.keys_out, s.iota, m.sorted,
                                                     static_cast<int>(A), 0, end_bit(E), st));
  const int blocks = static_cast<int>(std::min<std::int64_t>((A + 255) / 256, sms * 16));
  inverse_kernel<<<blocks, 256, 0, st>>>(m.sorted, token_of, K, A, m.slot, m.sorted_token);
  TILEMOE_CHECK_LAUNCH();
}

void metadata_offsets(const std::int32_t* counts, int E, int tile_m, std::int64_t* offsets, std::int32_t* tile_offsets) {
  check_arg(E >= 1 && E <= kMaxExperts, "num_experts", E, "1 <= num_experts <= 4096 on the GPU");
  cudaStream_t st = current_stream();
  switch (scan_threads(E)) {
    case 32: scan_kernel<32><<<1, 32, 0, st>>>(counts, E, tile_m, offsets, tile_offsets); break;
    case 256: scan_kernel<256><<<1, 256, 0, st>>>(counts, E, tile_m, offsets, tile_offsets); break;
    default: scan_kernel<1024><<<1, 1024, 0, st>>>(counts, E, tile_m, offsets, tile_offsets);
  }
  TILEMOE_CHECK_LAUNCH();
}

void uniform_offsets(std::int64_t rows, int E, int tile_m, std::int64_t* offsets, std::int32_t* tile_offsets) {
  uniform_offsets_kernel<<<(E + 1 + 255) / 256, 256, 0, current_stream()>>>(rows, E, tile_m, offsets, tile_offsets);
  TILEMOE_CHECK_LAUNCH();
}

}  // namespace tilemoe::detail::gpu
