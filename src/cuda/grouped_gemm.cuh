// What the grouped GEMM kernels share: their arguments and the Hopper kernel's launcher.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>
#include <string>

#include "tile_order.hpp"
#include "tilemoe/config.hpp"

namespace tilemoe::detail::gpu {

struct GemmArgs {
  const __nv_bfloat16* A;         // rows of K elements, stride lda
  std::int64_t lda;
  const std::int32_t* gather;     // sorted position -> A row; null: see a_local
  bool a_local;                   // without gather: row = p - offsets[e] (true) or p (false)
  const __nv_bfloat16* B;         // [E, rows_b, K]
  std::int64_t b_expert_stride;   // rows_b * K
  std::int64_t K;
  std::int64_t N;                 // output columns
  bool gated;                     // up: gate rows j, up rows N + j
  Activation act;
  const std::int64_t* offsets;    // [E + 1]
  const std::int32_t* tile_offsets;  // [E + 1]
  int E;
  __nv_bfloat16* C;
  std::int64_t ldc;
};

// A block's row tile: global tile index -> its expert, first sorted position and row count, by
// binary search over the device-side tile_offsets (the last expert whose first tile <= tile).
struct RowTile {
  int expert;
  std::int64_t m0;
  int rows;
};
template <int kBM>
__device__ __forceinline__ RowTile find_row_tile(const GemmArgs& g, int tile) {
  int lo = 0, hi = g.E - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (g.tile_offsets[mid] <= tile) lo = mid; else hi = mid - 1;
  }
  const std::int64_t m0 = g.offsets[lo] + std::int64_t(tile - g.tile_offsets[lo]) * kBM;
  return {lo, m0, static_cast<int>(min(std::int64_t(kBM), g.offsets[lo + 1] - m0))};
}

// The same by a whole warp (all 32 lanes, converged): each lane compares a strided slice of
// tile_offsets[1 .. E-1] with the tile, one ballot counts the experts whose first tile is <= tile.
// Independent loads instead of log2(E) dependent ones: one memory latency, then one for offsets.
// The sm90 kernels' tiles start sooner (H100 run 42, against the binary search: Qwen3-30B-A3B
// T 16384 up-projection 1.784 -> 1.672 ms, down 0.718 -> 0.687; sonic-7b down 0.323 -> 0.314).
// The portable mma.sync kernel (grouped_gemm.cu) still takes the binary search above: not
// measured with this one yet.
// The last expert e with tile_offsets[e] * scale <= t, by that ballot (scale 1: row tile t;
// scale ncol: output tile t of expert-major order).
__device__ __forceinline__ int expert_of_tile_warp(const GemmArgs& g, std::int64_t t, int scale) {
  const int lane = threadIdx.x & 31;
  int e = 0;
#pragma unroll 4
  for (int i0 = 1; i0 < g.E; i0 += 32) {
    const int i = i0 + lane;
    e += __popc(__ballot_sync(0xffffffffu, i < g.E && std::int64_t(g.tile_offsets[i]) * scale <= t));
  }
  return e;
}
// Units of unit_rows rows aligned to each expert's first row (the row tiles of a cluster's
// blocks: an expert of c rows has ceil(c / unit_rows) units, and no unit spans two experts),
// ncol output columns each, experts in order: unit-column t's expert, the unit-columns of the
// experts before it, and its units (expert E past the last). By a whole warp: 32 experts per
// step, a scan of their unit-columns, a ballot.
struct UnitSpan {
  int expert;
  std::int64_t first;
  int units;
};
__device__ __forceinline__ int units_of_expert(const GemmArgs& g, int e, int unit_rows) {
  return static_cast<int>((g.offsets[e + 1] - g.offsets[e] + unit_rows - 1) / unit_rows);
}
__device__ __forceinline__ UnitSpan expert_of_unit_warp(const GemmArgs& g, std::int64_t t, int unit_rows, int ncol) {
  const int lane = threadIdx.x & 31;
  std::int64_t base = 0;
  for (int e0 = 0; e0 < g.E; e0 += 32) {
    const int e = e0 + lane;
    const int units = e < g.E ? units_of_expert(g, e, unit_rows) : 0;
    std::int64_t incl = std::int64_t(units) * ncol;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const std::int64_t v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    const std::int64_t chunk = __shfl_sync(0xffffffffu, incl, 31);
    if (base + chunk > t) {
      const int k = __popc(__ballot_sync(0xffffffffu, base + incl <= t));  // this step's experts before t
      const std::int64_t before = __shfl_sync(0xffffffffu, incl, k > 0 ? k - 1 : 0);
      return {e0 + k, base + (k > 0 ? before : 0), __shfl_sync(0xffffffffu, units, k)};
    }
    base += chunk;
  }
  return {g.E, base, 0};
}
// The units of expert_of_unit_warp over all experts (a whole warp).
__device__ __forceinline__ int count_units_warp(const GemmArgs& g, int unit_rows) {
  int sum = 0;
  for (int e = threadIdx.x & 31; e < g.E; e += 32) sum += units_of_expert(g, e, unit_rows);
  return __reduce_add_sync(0xffffffffu, sum);
}
template <int kBM>
__device__ __forceinline__ RowTile find_row_tile_warp(const GemmArgs& g, int tile) {
  const int e = expert_of_tile_warp(g, tile, 1);
  const std::int64_t m0 = g.offsets[e] + std::int64_t(tile - g.tile_offsets[e]) * kBM;
  return {e, m0, static_cast<int>(min(std::int64_t(kBM), g.offsets[e + 1] - m0))};
}
// Output tile t of a grouped launch -> (row tile, column tile): raster_tile (tile_order.hpp).

// Output tile t -> (row tile, column tile) and its RowTile, rasterized within each expert: an
// expert's tiles are t in [tile_offsets[e] ncol, tile_offsets[e + 1] ncol), walked in groups of
// group_rows of its row tiles (down a group's rows, then its next column). Unlike raster_tile's
// groups of fixed rows, which straddle experts (an expert of 8-9 row tiles sat in two groups of 16
// and its weights were read from DRAM once per group), a group never spans two experts. By a
// whole warp (all 32 lanes converged), one ballot as in find_row_tile_warp; t below
// tile_offsets[E] * ncol.
template <int kBM>
__device__ __forceinline__ RowTile expert_raster_tile(const GemmArgs& g, std::int64_t t, int ncol, int group_rows,
                                                      TileCoord& tc) {
  const int e = expert_of_tile_warp(g, t, ncol);
  const int first_tile = g.tile_offsets[e];
  tc = raster_tile(t - std::int64_t(first_tile) * ncol, g.tile_offsets[e + 1] - first_tile, ncol, group_rows);
  tc.row += first_tile;
  const std::int64_t m0 = g.offsets[e] + std::int64_t(tc.row - first_tile) * kBM;
  return {e, m0, static_cast<int>(min(std::int64_t(kBM), g.offsets[e + 1] - m0))};
}

// Either raster (the sm90 kernels; expert = expert_raster_tile): tile t of nrow x ncol.
template <int kBM>
__device__ __forceinline__ RowTile tile_at(const GemmArgs& g, std::int64_t t, int nrow, int ncol, int group_rows,
                                           bool expert, TileCoord& tc) {
  if (expert) return expert_raster_tile<kBM>(g, t, ncol, group_rows, tc);
  tc = raster_tile(t, nrow, ncol, group_rows);
  return find_row_tile_warp<kBM>(g, tc.row);
}

// Stores two adjacent outputs (p, j) and (p, j + 1) of C as bf16: one 4-byte store where the pair
// is aligned and inside N, element by element at the right edge.
__device__ __forceinline__ void store_pair(const GemmArgs& g, std::int64_t p, std::int64_t j, float v0,
                                           float v1) {
  __nv_bfloat16* dst = g.C + p * g.ldc + j;
  if ((g.ldc & 1) == 0 && j + 1 < g.N) {
    *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(v0, v1);
  } else {
    if (j < g.N) dst[0] = __float2bfloat16_rn(v0);
    if (j + 1 < g.N) dst[1] = __float2bfloat16_rn(v1);
  }
}

// The sm_90a kernel (sm90/grouped_wgmma.cu): runs it and returns true where it applies (an
// H100/H200, 16-byte aligned operands), else returns false and launches nothing.
bool launch_grouped_wgmma(const GemmArgs& g, bool up, std::int64_t max_tiles, std::int64_t a_rows);

// The fused path's warp-specialized persistent sm_90a kernels (sm90/grouped_ws.cu): TMA weights,
// gathered rows by producer warps, wgmma consumers, staged 16-byte stores. ws_refusal says why
// they cannot take a projection ("" when they can); launch_grouped_ws requires that they can.
// a_rows: rows allocated in A where A is read by TMA (the down-projection, and an up-projection
// without gather: staged rows or a dense pass), which needs its extent;
// stages: shared-memory pipeline stages, 0 = ws_stages(), 1 = no overlap (load, then compute).
std::string ws_refusal(const GemmArgs& g, bool up, std::int64_t a_rows);
void launch_grouped_ws(const GemmArgs& g, bool up, std::int64_t max_tiles, std::int64_t a_rows, int stages);
// Both projections in one launch (decode sizes, heuristics.hpp ws_pair): the up-projection over
// contiguous rows (up.gather null: staged rows, by TMA) writing act, then the down-projection
// reading it, whose tiles wait until their row tile's activations are written, so that SMs out
// of up-projection tiles go on with the down-projection instead of idling in the up-projection's
// tail. Both must be accepted by ws_refusal, with the same offsets and tile_offsets.
void launch_grouped_ws_pair(const GemmArgs& up, const GemmArgs& down, std::int64_t max_tiles, std::int64_t a_rows_up,
                            std::int64_t a_rows_down, int stages);

// out [rows, d] = x[index[p]] for p below min(*count, max_rows) (gather_rows.cu): the gathered
// rows of x copied once, in sorted order, for an up-projection that then reads them by TMA.
// d and ldx multiples of 8, x and out 16-byte aligned; count is on the device.
void gather_rows(const __nv_bfloat16* x, std::int64_t d, std::int64_t ldx, const std::int32_t* index,
                 const std::int64_t* count, std::int64_t max_rows, __nv_bfloat16* out);

}  // namespace tilemoe::detail::gpu
