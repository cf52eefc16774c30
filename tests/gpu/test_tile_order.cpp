// The grouped GEMM kernels' tile orders (src/cuda/tile_order.hpp), checked on the host: every
// order visits each output tile exactly once, and a cluster's or a wide tile's units cover each
// expert's rows exactly once. A tile visited twice computes the same outputs twice (the result
// checks cannot see it, only the time can); one never visited leaves outputs unwritten. These
// run without a GPU.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "cuda/tile_order.hpp"

using tilemoe::detail::gpu::raster_tile;
using tilemoe::detail::gpu::RowSpan;
using tilemoe::detail::gpu::TileCoord;
using tilemoe::detail::gpu::unit_block_rows;

namespace {

// Every grid shape and group size below, with and without the serpentine column order.
void check_raster(int nrow, int ncol, int group_rows, bool serpentine) {
  SCOPED_TRACE(testing::Message() << "nrow " << nrow << " ncol " << ncol << " group_rows " << group_rows
                                  << " serpentine " << serpentine);
  const std::int64_t per_group = std::int64_t(group_rows) * ncol, total = std::int64_t(nrow) * ncol;
  std::vector<int> seen(static_cast<std::size_t>(total), 0);
  TileCoord prev{-1, -1};
  for (std::int64_t t = 0; t < total; ++t) {
    const TileCoord c = raster_tile(t, nrow, ncol, group_rows, serpentine);
    ASSERT_TRUE(c.row >= 0 && c.row < nrow && c.col >= 0 && c.col < ncol) << "t " << t << ": " << c.row << ", " << c.col;
    ++seen[static_cast<std::size_t>(c.row) * ncol + c.col];
    // Tile t is in group t / per_group, whose rows are the group's own.
    const std::int64_t g = t / per_group;
    EXPECT_GE(c.row, g * group_rows) << "t " << t;
    EXPECT_LT(c.row, (g + 1) * group_rows) << "t " << t;
    if (t > 0 && t / per_group == (t - 1) / per_group) {
      // Within a group: down the rows, then the next column (reversed in odd groups, serpentine).
      if (c.col == prev.col) {
        EXPECT_EQ(c.row, prev.row + 1) << "t " << t;
      } else {
        EXPECT_EQ(c.col, prev.col + (serpentine && (g & 1) ? -1 : 1)) << "t " << t;
        EXPECT_EQ(c.row, g * group_rows) << "t " << t;
      }
    } else if (t > 0 && serpentine) {
      EXPECT_EQ(c.col, prev.col) << "t " << t << ": a group starts on the column the last one ended on";
    }
    prev = c;
  }
  for (std::int64_t i = 0; i < total; ++i) ASSERT_EQ(seen[static_cast<std::size_t>(i)], 1) << "tile " << i;
}

}  // namespace

TEST(GpuTileOrder, RasterVisitsEveryTileOnce) {
  for (int nrow : {1, 2, 7, 8, 9, 16, 33})
    for (int ncol : {1, 2, 5, 12})
      for (int group_rows : {1, 3, 8, 16, 64})
        for (bool serpentine : {false, true}) check_raster(nrow, ncol, group_rows, serpentine);
  std::mt19937 rng(7);
  for (int i = 0; i < 200; ++i) {
    std::uniform_int_distribution<int> rows(1, 300), cols(1, 60), groups(1, 40);
    check_raster(rows(rng), cols(rng), groups(rng), (i & 1) != 0);
  }
}

// A cluster's units (cs blocks of tile_rows rows each, from each expert's first row) and the wide
// tile's (cs 1, 256 rows): over every unit and column of an expert, the blocks' rows are the
// expert's, each row once per column; a block past the expert's rows has none (rows 0, m0 the
// expert's first row), and every unit has rows in its first block.
TEST(GpuTileOrder, UnitsCoverEachExpertsRowsOnce) {
  std::mt19937 rng(11);
  for (int cs : {1, 2, 4})
    for (int tile_rows : {128, 256})
      for (int round = 0; round < 20; ++round) {
        const int ncol = std::uniform_int_distribution<int>(1, 12)(rng);
        const int group_units = std::uniform_int_distribution<int>(1, 10)(rng);
        const bool serpentine = (round & 1) != 0;
        // Expert row counts: empty, one row, exact multiples of a unit, and random.
        const std::int64_t unit_rows = std::int64_t(tile_rows) * cs;
        std::vector<std::int64_t> counts = {0, 1, unit_rows, unit_rows - 1, unit_rows + 1, 3 * unit_rows};
        for (int e = 0; e < 10; ++e) counts.push_back(std::uniform_int_distribution<std::int64_t>(0, 5 * unit_rows)(rng));
        std::int64_t lo = std::uniform_int_distribution<std::int64_t>(0, 1000)(rng);
        for (const std::int64_t c : counts) {
          SCOPED_TRACE(testing::Message() << "cs " << cs << " tile_rows " << tile_rows << " count " << c << " ncol "
                                          << ncol << " group_units " << group_units << " serpentine " << serpentine);
          const std::int64_t hi = lo + c;
          const int units = static_cast<int>((c + unit_rows - 1) / unit_rows);
          std::vector<int> covered(static_cast<std::size_t>(c * ncol), 0);
          for (std::int64_t t = 0; t < std::int64_t(units) * ncol; ++t) {
            const TileCoord u = raster_tile(t, units, ncol, group_units, serpentine);
            ASSERT_TRUE(u.row >= 0 && u.row < units && u.col >= 0 && u.col < ncol);
            for (int rank = 0; rank < cs; ++rank) {
              const RowSpan r = unit_block_rows(lo, hi, u.row, rank, cs, tile_rows);
              ASSERT_GE(r.rows, 0);
              ASSERT_LE(r.rows, tile_rows);
              if (rank == 0) EXPECT_GT(r.rows, 0) << "unit " << u.row << " has no rows";
              if (r.rows == 0) {
                EXPECT_EQ(r.m0, lo);
                continue;
              }
              ASSERT_GE(r.m0, lo);
              ASSERT_LE(r.m0 + r.rows, hi);
              for (std::int64_t p = r.m0; p < r.m0 + r.rows; ++p) ++covered[static_cast<std::size_t>((p - lo) * ncol + u.col)];
            }
          }
          for (std::size_t i = 0; i < covered.size(); ++i) ASSERT_EQ(covered[i], 1) << "row " << i / ncol << " col " << i % ncol;
          lo = hi;
        }
      }
}
