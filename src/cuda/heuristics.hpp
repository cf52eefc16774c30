// Tile shapes of the grouped GEMM kernels, chosen on the host, apart from the kernels.
// One shape for now (mma.sync bf16, 8 warps of 64 x 32): 128 x 128 x 64, 3 cp.async stages
// (96 KiB of shared memory, two blocks per SM). The gated up-projection's 128 columns are
// 64 gate + 64 up columns of the same outputs. Measured on an H100 (docs/gpu.md): 128 x 128 x 32
// with 4 stages ~250 TFLOP/s on large layers; 128 x 256 x 32 at one block per SM was slower.
#pragma once
#include <cstdint>

namespace tilemoe::detail::gpu {

struct GroupedTiles {
  static constexpr int kM = 128, kN = 128, kK = 64, kStages = 3, kThreads = 256, kMinBlocks = 2;
  static constexpr int smem_bytes() { return kStages * (kM + kN) * kK * 2; }
};

// Which kernel a grouped projection takes on Hopper (sm90/grouped_wgmma.cu: wgmma, 128 x 256 x 64,
// one block per SM) where both apply. Measured on an H100 at T 24576 (docs/gpu.md, runs 7, 11):
// - up-projection with SwiGLU (its own epilogue instantiation): wgmma 503-578 TFLOP/s against
//   mma.sync's 321-354 on sonic-7b, qwen3-30b-a3b, olmoe-1b-7b; 343 vs 318 on mixtral-8x7b.
//   Other activations keep a generic epilogue whose code size stalled instruction fetch (ncu),
//   so they stay on mma.sync.
// - down-projection: wgmma wins once K (= n) is long enough (K 768: 435 vs 297 TFLOP/s; K 14336:
//   604 vs 356) and not at K 256 (201 vs 211).
// TILEMOE_GROUPED_KERNEL=mma|wgmma in the environment forces one (tests, A/B timing).
inline bool prefer_wgmma(bool up, bool swiglu, std::int64_t K) { return up ? swiglu : K >= 512; }

// Row stride (elements) of the bf16 activation between the two GEMMs: a multiple of 8 so that
// its rows stay 16-byte aligned for cp.async.
inline std::int64_t act_row_stride(std::int64_t n) { return (n + 7) / 8 * 8; }

}  // namespace tilemoe::detail::gpu
