// Routing metadata on the GPU, without a host synchronization: a stable counting sort of the
// assignments by expert, giving per-expert counts, exclusive scans of the counts and of their row
// tiles, the sorted order, its inverse and the sorted tokens. Small routings (decode) take one
// block in one kernel; larger ones chunks of the assignments, a block each, in three kernels
// (count, scan, place). Positions fit int32 (A < 2^31); row offsets into activations are int64.
#include <algorithm>
#include <cub/block/block_scan.cuh>

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

// The scans: one block of kScanThreads threads, kScanItems experts each; scan_threads(E) picks
// the smallest block that covers E (one warp at E <= 128: a block of 1024 took 5.6 us at E 128,
// most of it at its barriers, Nsight Compute, H200 run 91; the metadata stage 2-5 us shorter on
// the issue's layers, run 93).
constexpr int kScanItems = 4;
constexpr int scan_threads(int E) { return E <= 32 * kScanItems ? 32 : E <= 256 * kScanItems ? 256 : 1024; }
static_assert(1024 * kScanItems >= kMaxExperts, "the scans cover every expert");

// The scans by one block of kScanThreads threads: offsets and tile_offsets [E + 1] of the counts
// count(e), e < E.
template <int kScanThreads, class Count>
__device__ void scan_offsets(Count count, int E, int tile_m, std::int64_t* __restrict__ offsets,
                             std::int32_t* __restrict__ tile_offsets) {
  using Scan64 = cub::BlockScan<long long, kScanThreads>;
  using Scan32 = cub::BlockScan<int, kScanThreads>;
  __shared__ typename Scan64::TempStorage t64;
  __shared__ typename Scan32::TempStorage t32;
  long long c[kScanItems];
  int tl[kScanItems];
  for (int i = 0; i < kScanItems; ++i) {
    const int e = threadIdx.x * kScanItems + i;
    c[i] = e < E ? count(e) : 0;
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

template <int kScanThreads>
__global__ void __launch_bounds__(kScanThreads) scan_kernel(const std::int32_t* __restrict__ counts, int E, int tile_m,
                                                           std::int64_t* __restrict__ offsets,
                                                           std::int32_t* __restrict__ tile_offsets) {
  scan_offsets<kScanThreads>([&](int e) { return counts[e]; }, E, tile_m, offsets, tile_offsets);
}

__global__ void uniform_offsets_kernel(std::int64_t rows, int E, int tile_m, std::int64_t* offsets,
                                       std::int32_t* tile_offsets) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e <= E) {
    offsets[e] = rows * e;
    tile_offsets[e] = static_cast<std::int32_t>(((rows + tile_m - 1) / tile_m) * e);
  }
}

// Places assignment a of expert e (-1: none) at its warp's next position for e (cw[e], which the
// lowest lane of e's peers, the warp's lanes of the same expert, moves on) plus its rank among the
// peers: sorted, slot and sorted_token. By a whole warp.
__device__ __forceinline__ void place(std::int64_t a, int e, unsigned peers, int* cw,
                                      const std::int32_t* __restrict__ token_of, int K, const Metadata& m) {
  const int lane = threadIdx.x & 31, leader = __ffs(peers) - 1;
  int pos = 0;
  if (e >= 0 && lane == leader) {
    pos = cw[e];
    cw[e] = pos + __popc(peers);
  }
  pos = __shfl_sync(0xffffffffu, pos, leader) + __popc(peers & ((1u << lane) - 1));
  if (e >= 0) {
    m.sorted[pos] = static_cast<std::int32_t>(a);
    m.slot[a] = pos;
    m.sorted_token[pos] = token_of ? token_of[a] : static_cast<std::int32_t>(a / K);
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
    place(begin + i * 32 + lane, ex[i], __match_any_sync(0xffffffffu, ex[i]), cw, token_of, K, m);
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

// The general path: the one-block kernel's counting sort over chunks of the assignments, a block
// per chunk (8 warps, fewer where shared memory is short for E), in three launches:
// 1. chunk_count_kernel: block b's counts per expert, into cnt[b][e] (E + 1 columns, column E the
//    unused slots);
// 2. chunk_scan_kernel (one block): the counts over the chunks, the scans of rows and tiles, and
//    cnt[b][e] <- where chunk b's first assignment of expert e goes (offsets[e] + earlier chunks');
// 3. chunk_place_kernel: block b counts again per warp, turns the counters into positions from
//    cnt[b][e] and places its assignments, in order within each expert. (Counting twice is on
//    purpose: keeping the per-warp counts from step 1 would make step 2's counters, all in one
//    block's shared memory, eight times as many.)
// Until bc709d1 a shared-memory histogram, the scans, CUB's radix sort of (expert, index)
// pairs and an inverse-map kernel: ~7 launches, 0.037 ms on sonic-7b T 24576 (A 196608, H200 run
// 128).
constexpr int kChunkWarps = 8, kChunkThreads = kChunkWarps * 32;  // at most
constexpr int kChunkRun = 8;            // 32-assignment groups a warp loads before counting them
constexpr std::int64_t kChunkMin = 2048;  // assignments per chunk, at least (a multiple of kChunkThreads)
constexpr int kChunkCells = 24576;      // chunks x (E + 1) counters, at most: the scan block's 96 KiB
static_assert(kChunkMin % kChunkThreads == 0, "a warp's segment is whole groups of 32");

// Warps per chunk block: 8, or fewer where their counters [warps][E + 1] would not fit in the
// device's shared memory (E 4096 takes 131 KiB with 8).
int chunk_warps(int E) {
  int w = kChunkWarps;
  while (w > 1 && sizeof(int) * w * (static_cast<std::size_t>(E) + 1) > device_props().smem_optin) w /= 2;
  return w;
}

struct Chunks {
  int count;          // chunks (blocks)
  std::int64_t size;  // assignments per chunk, a multiple of kChunkThreads (the last may hold fewer)
};
Chunks chunks_for(std::int64_t A, int E) {
  // The scan block holds every chunk's counters and the totals in shared memory (16 KiB left for
  // its scans' own).
  const std::int64_t room = static_cast<std::int64_t>(device_props().smem_optin) / 4 - 4096 - (E + 1);
  const std::int64_t most = std::max<std::int64_t>(1, std::min<std::int64_t>(kChunkCells, room) / (E + 1));
  const std::int64_t want = std::clamp<std::int64_t>((A + kChunkMin - 1) / kChunkMin, 1, most);
  const std::int64_t per = std::max<std::int64_t>(1, (A + want - 1) / want);
  const std::int64_t size = (per + kChunkThreads - 1) / kChunkThreads * kChunkThreads;
  return {static_cast<int>(std::max<std::int64_t>(1, (A + size - 1) / size)), size};
}

// Warp `warp` of chunk block blockIdx.x: its segment of the chunk, [begin, end).
struct Segment {
  std::int64_t begin, end;
};
__device__ __forceinline__ Segment warp_segment(std::int64_t A, std::int64_t chunk, int warp) {
  const std::int64_t seg = chunk / (blockDim.x >> 5);
  const std::int64_t b = blockIdx.x * chunk + warp * seg;
  return {min(b, A), min(b + seg, A)};
}

// Walks a warp's segment 32 assignments at a time, kChunkRun groups loaded at once; per group
// f(e, peers): e the lane's expert (-1 past the end or out of [0, E]), peers the lanes of the same
// expert. f's shared-memory updates are seen by the next group's (__syncwarp).
template <class F>
__device__ __forceinline__ void for_each_group(const std::int32_t* __restrict__ expert, Segment sg, int E, F f) {
  const int lane = threadIdx.x & 31;
  for (std::int64_t g0 = sg.begin; g0 < sg.end; g0 += 32 * kChunkRun) {
    int ex[kChunkRun];
#pragma unroll
    for (int i = 0; i < kChunkRun; ++i) {
      const std::int64_t a = g0 + i * 32 + lane;
      const int e = a < sg.end ? expert[a] : -1;
      ex[i] = static_cast<unsigned>(e) <= static_cast<unsigned>(E) ? e : -1;
    }
#pragma unroll
    for (int i = 0; i < kChunkRun; ++i) {
      if (g0 + i * 32 >= sg.end) break;  // uniform over the warp
      f(g0 + i * 32 + lane, ex[i], __match_any_sync(0xffffffffu, ex[i]));
      __syncwarp();
    }
  }
}

// The warps' counts of the block's chunk: cw [warps][E + 1] in shared memory, zeroed here.
__device__ void chunk_warp_counts(const std::int32_t* __restrict__ expert, std::int64_t A, int E, std::int64_t chunk,
                                  int* c) {
  const int cols = E + 1, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int i = threadIdx.x; i < static_cast<int>(blockDim.x >> 5) * cols; i += blockDim.x) c[i] = 0;
  __syncthreads();
  int* cw = c + warp * cols;
  for_each_group(expert, warp_segment(A, chunk, warp), E, [&](std::int64_t, int e, unsigned peers) {
    if (e >= 0 && lane == __ffs(peers) - 1) cw[e] += __popc(peers);
  });
  __syncthreads();
}

__global__ void __launch_bounds__(kChunkThreads) chunk_count_kernel(const std::int32_t* __restrict__ expert,
                                                                   std::int64_t A, int E, std::int64_t chunk,
                                                                   std::int32_t* __restrict__ cnt) {
  extern __shared__ int c[];
  chunk_warp_counts(expert, A, E, chunk, c);
  const int cols = E + 1;
  for (int e = threadIdx.x; e < cols; e += blockDim.x) {
    int n = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) n += c[w * cols + e];
    cnt[std::int64_t(blockIdx.x) * cols + e] = n;
  }
}

__global__ void __launch_bounds__(1024) chunk_scan_kernel(std::int32_t* __restrict__ cnt, int chunks, int E, int tile_m,
                                                         Metadata m) {
  extern __shared__ int sc[];  // [chunks][E + 1], then the totals [E + 1]
  const int cols = E + 1, cells = chunks * cols;
  int* tot = sc + cells;
  for (int i = threadIdx.x; i < cells; i += blockDim.x) sc[i] = cnt[i];
  __syncthreads();
  for (int e = threadIdx.x; e < cols; e += blockDim.x) {
    int n = 0;
    for (int b = 0; b < chunks; ++b) n += sc[b * cols + e];
    tot[e] = n;
    if (e < E) m.counts[e] = n;
  }
  __syncthreads();
  scan_offsets<1024>([&](int e) { return tot[e]; }, E, tile_m, m.offsets, m.tile_offsets);
  __syncthreads();  // offsets[] written by this block: visible to it after the barrier
  for (int e = threadIdx.x; e < cols; e += blockDim.x) {
    std::int64_t next = m.offsets[e];  // at e = E: the real assignments' total, where the unused slots start
    for (int b = 0; b < chunks; ++b) {
      const int n = sc[b * cols + e];
      cnt[b * cols + e] = static_cast<std::int32_t>(next);
      next += n;
    }
  }
}

__global__ void __launch_bounds__(kChunkThreads) chunk_place_kernel(const std::int32_t* __restrict__ expert,
                                                                   const std::int32_t* __restrict__ token_of, int K,
                                                                   std::int64_t A, int E, std::int64_t chunk,
                                                                   const std::int32_t* __restrict__ cnt, Metadata m) {
  extern __shared__ int c[];
  chunk_warp_counts(expert, A, E, chunk, c);
  const int cols = E + 1, warp = threadIdx.x / 32;
  for (int e = threadIdx.x; e < cols; e += blockDim.x) {
    int next = cnt[std::int64_t(blockIdx.x) * cols + e];
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) {
      const int n = c[w * cols + e];
      c[w * cols + e] = next;
      next += n;
    }
  }
  __syncthreads();
  int* cw = c + warp * cols;
  for_each_group(expert, warp_segment(A, chunk, warp), E, [&](std::int64_t a, int e, unsigned peers) {
    place(a, e, peers, cw, token_of, K, m);
  });
}

std::size_t chunk_smem_bytes(int warps, int E) { return sizeof(int) * warps * (static_cast<std::size_t>(E) + 1); }
std::size_t chunk_scan_smem_bytes(int chunks, int E) {
  return sizeof(int) * (static_cast<std::size_t>(chunks) + 1) * (static_cast<std::size_t>(E) + 1);
}

template <class Kernel>
void allow_smem(Kernel k, std::size_t bytes) {
  if (bytes > 48 * 1024)
    TILEMOE_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

}  // namespace

std::size_t metadata_scratch_bytes(std::int64_t A, int E) {
  if (small_path(A, E)) return 0;  // the one-block path needs none
  const Chunks ch = chunks_for(A, E);
  return sizeof(std::int32_t) * static_cast<std::size_t>(ch.count) * (static_cast<std::size_t>(E) + 1);
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
  const Chunks ch = chunks_for(A, E);
  auto* cnt = static_cast<std::int32_t*>(scratch);
  const int warps = chunk_warps(E);
  const std::size_t smem = chunk_smem_bytes(warps, E), scan_smem = chunk_scan_smem_bytes(ch.count, E);
  allow_smem(chunk_count_kernel, smem);
  allow_smem(chunk_place_kernel, smem);
  allow_smem(chunk_scan_kernel, scan_smem);
  chunk_count_kernel<<<ch.count, warps * 32, smem, st>>>(expert, A, E, ch.size, cnt);
  TILEMOE_CHECK_LAUNCH();
  chunk_scan_kernel<<<1, 1024, scan_smem, st>>>(cnt, ch.count, E, tile_m, m);
  TILEMOE_CHECK_LAUNCH();
  chunk_place_kernel<<<ch.count, warps * 32, smem, st>>>(expert, token_of, K, A, E, ch.size, cnt, m);
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
