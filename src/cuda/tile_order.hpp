// The order in which the grouped GEMM kernels walk their output tiles: index arithmetic only, in
// plain C++, shared by the kernels (grouped_gemm.cuh, sm90/grouped_ws.cu) and the host tests that
// check every order visits each tile once (tests/gpu/test_tile_order.cpp, which run without a GPU).
// The lookups that find a tile's expert from the device-side offsets (warp ballots) stay in
// grouped_gemm.cuh.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define TILEMOE_HD __host__ __device__ __forceinline__
#else
#define TILEMOE_HD inline
#endif

namespace tilemoe::detail::gpu {

struct TileCoord {
  int row, col;
};

// Tile t of a grid of nrow x ncol tiles, rasterized in groups of group_rows rows: consecutive
// tiles walk down a group's rows, then its next column, so the blocks running together share a
// few weight panels and a few row panels (which stay in L2) instead of streaming every column of
// the weights once per row tile. serpentine: every other group walks its columns in reverse, so
// that a group starts on the column whose weights the group before it ended on.
TILEMOE_HD TileCoord raster_tile(std::int64_t t, int nrow, int ncol, int group_rows, bool serpentine = false) {
  const std::int64_t per_group = std::int64_t(group_rows) * ncol;
  const int grp = static_cast<int>(t / per_group);
  const int first = grp * group_rows;
  const int rows_here = group_rows < nrow - first ? group_rows : nrow - first;
  const int rem = static_cast<int>(t - grp * per_group);
  const int col = rem / rows_here;
  return {first + rem % rows_here, serpentine && (grp & 1) ? ncol - 1 - col : col};
}

// A block's rows in a unit of cs row tiles of tile_rows rows that starts at an expert's first
// row (clusters, and the 256-row wide tile): the expert's rows are [lo, hi); block rank of unit u
// takes tile_rows rows from lo + (u cs + rank) tile_rows. Past hi it has none of its own (rows 0,
// m0 = lo: it still helps load the unit's weight tile).
struct RowSpan {
  std::int64_t m0;
  int rows;
};
TILEMOE_HD RowSpan unit_block_rows(std::int64_t lo, std::int64_t hi, int unit, int rank, int cs, int tile_rows) {
  const std::int64_t m0 = lo + (std::int64_t(unit) * cs + rank) * tile_rows;
  const int rows = m0 < hi ? static_cast<int>(tile_rows < hi - m0 ? tile_rows : hi - m0) : 0;
  return {rows > 0 ? m0 : lo, rows};
}

}  // namespace tilemoe::detail::gpu
