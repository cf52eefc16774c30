// What the grouped GEMM kernels share: their arguments and the Hopper kernel's launcher.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

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
bool launch_grouped_wgmma(const GemmArgs& g, bool up, std::int64_t max_tiles);

}  // namespace tilemoe::detail::gpu
