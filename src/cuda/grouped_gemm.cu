// The grouped GEMMs of the routed experts: one launch for all experts, each with its own M.
//   up:   act[p, j] = activation(x[row(p)] . w13[e][gate j], x[row(p)] . w13[e][up j])  (bf16 out)
//   down: y[p, i]   = act[p] . w2[e][i]                                                (bf16 out)
// Launch: grid (N tiles, an upper bound of the M tiles); block y is a global row-tile index
// mapped to (expert, tile) by a binary search over tile_offsets, which the metadata stage
// computed on the device, so nothing waits for the host. Blocks past the last tile return.
// Each block computes 128 x 256 with 8 warps (2 x 4, 64 x 64 each) of mma.sync m16n8k16 bf16,
// fp32 accumulate, fed by ldmatrix from a 4-stage cp.async pipeline (XOR-swizzled 64-byte
// rows, conflict-free ldmatrix). The up-projection gathers x rows by the sorted token index
// inside its loads and puts gate and up rows of the same outputs in 8-row pairs of the B tile,
// so one thread holds both and applies the activation before storing. Rows past the expert's
// count and columns past N or K are predicated (zero-filled loads, skipped stores).
// kAligned: K and every row stride are multiples of 8 elements (16-byte cp.async); otherwise
// the loads are element-wise (slower, any shape).
#include <algorithm>
#include <string>
#include <cuda_bf16.h>

#include "activation.cuh"
#include "context.cuh"
#include "heuristics.hpp"
#include "ptx/cp_async.cuh"
#include "ptx/ldmatrix.cuh"
#include "ptx/mma.cuh"
#include "stages.hpp"
#include "grouped_gemm.cuh"

namespace tilemoe::detail::gpu {
namespace {

using Tiles = GroupedTiles;
constexpr int kBM = Tiles::kM, kBN = Tiles::kN, kBK = Tiles::kK, kStages = Tiles::kStages;
constexpr int kThreads = Tiles::kThreads;

// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` in a [rows][64] bf16 tile: 128-byte
// rows, chunks XOR-swizzled by the row so that 8 rows' same chunk hit 8 different bank groups.
__device__ __forceinline__ std::uint32_t swz(int row, int chunk) {
  return static_cast<std::uint32_t>(row * 128 + ((chunk ^ (row & 7)) << 4));
}

// Warps: 2 (M) x 4 (N), each 64 x (8 * kNI). Loads: 8 chunks of 16 bytes per 64-wide row, so
// 32 rows per pass of 256 threads; A takes kBM / 32 passes, B kBN / 32.
constexpr int kNI = kBN / 32, kAPasses = kBM / 32, kBRows = kBN / 32, kKK = kBK / 16;

template <bool kUp, bool kAligned>
__global__ void __launch_bounds__(kThreads, Tiles::kMinBlocks) grouped_gemm_kernel(const GemmArgs g) {
  static_assert(kBM == 128 && kBK == 64 && kThreads == 256 && kBN % 64 == 0, "the thread mapping assumes these");
  extern __shared__ __align__(128) unsigned char smem[];
  const TileCoord tc = raster_tile(std::int64_t(blockIdx.y) * gridDim.x + blockIdx.x, gridDim.y, gridDim.x,
                                    kRasterRows);
  const int tile = tc.row;
  if (tile >= g.tile_offsets[g.E]) return;
  const RowTile rt = find_row_tile<kBM>(g, tile);
  const int e = rt.expert, rows = rt.rows;
  const std::int64_t m0 = rt.m0;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3;

  // This thread's load rows: lr + 32 i, chunk lc of every k tile.
  const int lr = tid >> 3, lc = tid & 7;
  const __nv_bfloat16* a_src[kAPasses];
  const __nv_bfloat16* b_src[kBRows];
  bool a_ok[kAPasses], b_ok[kBRows];
  const __nv_bfloat16* Be = g.B + std::int64_t(e) * g.b_expert_stride;
  const std::int64_t j0 = kUp && g.gated ? std::int64_t(tc.col) * (kBN / 2) : std::int64_t(tc.col) * kBN;
#pragma unroll
  for (int i = 0; i < kAPasses; ++i) {
    const int r = lr + 32 * i;
    a_ok[i] = r < rows;
    std::int64_t arow = 0;
    if (a_ok[i]) {
      const std::int64_t p = m0 + r;
      arow = g.gather ? std::int64_t(g.gather[p]) : (g.a_local ? p - g.offsets[e] : p);
    }
    a_src[i] = g.A + arow * g.lda;
  }
#pragma unroll
  for (int i = 0; i < kBRows; ++i) {
    const int r = lr + 32 * i;
    std::int64_t brow, col;
    if (kUp && g.gated) {
      const int w = r & 15;
      col = j0 + (r >> 4) * 8 + (w & 7);
      brow = w < 8 ? col : g.N + col;
    } else {
      col = j0 + r;
      brow = col;
    }
    b_ok[i] = col < g.N;
    b_src[i] = Be + (b_ok[i] ? brow : 0) * g.K;
  }

  const std::uint32_t sbase = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem));
  constexpr std::uint32_t kStageA = kBM * kBK * 2, kStageB = kBN * kBK * 2;
  auto sA = [&](int s) { return sbase + s * kStageA; };
  auto sB = [&](int s) { return sbase + kStages * kStageA + s * kStageB; };
  const int ktiles = static_cast<int>((g.K + kBK - 1) / kBK);

  auto load_stage = [&](int s, int kt) {
    const std::int64_t k0 = std::int64_t(kt) * kBK + lc * 8;
    const bool kin = k0 < g.K;
#pragma unroll
    for (int i = 0; i < kAPasses + kBRows; ++i) {
      const bool is_a = i < kAPasses;
      const int ii = is_a ? i : i - kAPasses;
      const int r = lr + 32 * ii;
      const bool ok = (is_a ? a_ok[ii] : b_ok[ii]) && kin;
      const __nv_bfloat16* src = is_a ? a_src[ii] : b_src[ii];
      const std::uint32_t dst = (is_a ? sA(s) : sB(s)) + swz(r, lc);
      if constexpr (kAligned) {
        ptx::cp_async_cg_16(dst, ok ? src + k0 : g.B, ok ? 16 : 0);
      } else {
        alignas(16) __nv_bfloat16 v[8];
#pragma unroll
        for (int j = 0; j < 8; ++j)
          v[j] = (is_a ? a_ok[ii] : b_ok[ii]) && k0 + j < g.K ? src[k0 + j] : __float2bfloat16(0.0f);
        *reinterpret_cast<uint4*>(smem + (dst - sbase)) = *reinterpret_cast<const uint4*>(v);
      }
    }
  };

  float acc[4][kNI][4];
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[mi][ni][q] = 0.0f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ktiles) load_stage(s, s);
    ptx::cp_async_commit_group();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    ptx::cp_async_wait_group<kStages - 2>();
    __syncthreads();
    const int pf = kt + kStages - 1;
    if (pf < ktiles) load_stage(pf % kStages, pf);
    ptx::cp_async_commit_group();
    const int s = kt % kStages;
    // Fragments double-buffered across the k16 steps: step kk + 1's ldmatrix are issued before
    // step kk's mma.
    std::uint32_t af[2][4][4], bfr[2][kNI / 2][4];
    auto load_frags = [&](int buf, int kk) {
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
        ptx::ldmatrix_x4(af[buf][mi], sA(s) + swz(wm * 64 + mi * 16 + (lane & 15), kk * 2 + (lane >> 4)));
#pragma unroll
      for (int nj = 0; nj < kNI / 2; ++nj)
        ptx::ldmatrix_x4(bfr[buf][nj], sB(s) + swz(wn * (8 * kNI) + nj * 16 + (lane & 7) + ((lane >> 4) << 3),
                                                    kk * 2 + ((lane >> 3) & 1)));
    };
    load_frags(0, 0);
#pragma unroll
    for (int kk = 0; kk < kKK; ++kk) {
      if (kk + 1 < kKK) load_frags((kk + 1) & 1, kk + 1);
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < kNI; ++ni)
          ptx::mma_m16n8k16_bf16(acc[mi][ni], af[kk & 1][mi], bfr[kk & 1][ni >> 1][(ni & 1) * 2],
                                 bfr[kk & 1][ni >> 1][(ni & 1) * 2 + 1]);
    }
  }
  ptx::cp_async_wait_group<0>();

  // Epilogue: fragment (row lane/4 [+8], columns 2*(lane%4) + {0, 1}) of each 16 x 8 tile.
  const int gr = lane >> 2, gc = (lane & 3) * 2;
  auto store2 = [&](std::int64_t p, std::int64_t j, float v0, float v1) { store_pair(g, p, j, v0, v1); };
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = wm * 64 + mi * 16 + gr + h * 8;
      if (r >= rows) continue;
      const std::int64_t p = m0 + r;
      if (kUp && g.gated) {
#pragma unroll
        for (int q = 0; q < kNI / 2; ++q) {
          const std::int64_t j = j0 + (wn * (kNI / 2) + q) * 8 + gc;
          store2(p, j, activate(g.act, acc[mi][2 * q][2 * h], acc[mi][2 * q + 1][2 * h]),
                 activate(g.act, acc[mi][2 * q][2 * h + 1], acc[mi][2 * q + 1][2 * h + 1]));
        }
      } else {
#pragma unroll
        for (int ni = 0; ni < kNI; ++ni) {
          const std::int64_t j = j0 + wn * (8 * kNI) + ni * 8 + gc;
          float v0 = acc[mi][ni][2 * h], v1 = acc[mi][ni][2 * h + 1];
          if (kUp) {
            v0 = activate(g.act, v0, 0.0f);
            v1 = activate(g.act, v1, 0.0f);
          }
          store2(p, j, v0, v1);
        }
      }
    }
}

bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15) == 0; }

// The up-projection g (routed rows by g.gather) over its rows copied once, in sorted order, into
// path.x_stage: staged gets the arguments over the copy, and the copy is enqueued. False, with
// nothing enqueued, where the fused kernels cannot take those arguments. g itself must be one
// that ws_refusal accepts (the copy reads x's rows in 16-byte chunks).
bool stage_up_rows(const GemmArgs& g, const GroupedPath& path, GemmArgs& staged) {
  auto* stage = reinterpret_cast<__nv_bfloat16*>(path.x_stage);
  staged = g;
  staged.A = stage;
  staged.lda = g.K;
  staged.gather = nullptr;
  staged.a_local = false;
  if (!ws_refusal(staged, true, path.x_stage_rows).empty()) return false;
  gather_rows(g.A, g.K, g.lda, g.gather, g.offsets + g.E, path.x_stage_rows, stage);
  return true;
}

// The kernel a projection ran, appended to path.ran where the caller asked for the list.
void note_kernel(const GroupedPath& path, bool up, const char* kernel) {
  if (!path.ran) return;
  if (!path.ran->empty()) *path.ran += ", ";
  *path.ran += std::string(up ? "up " : "down ") + kernel;
}

// The fused path's kernels where asked for and able (else the reason goes back to the caller),
// then the Hopper wgmma kernel, then mma.sync.
template <bool kUp>
std::string launch(const GemmArgs& g, std::int64_t max_tiles, std::int64_t a_rows, const GroupedPath& path) {
  std::string refusal;
  if (path.fused) {
    refusal = ws_refusal(g, kUp, a_rows);
    if (refusal.empty() && kUp && !g.gather && g.a_local && path.x_rows > 0) {
      // A dense pass (shared experts): x rows in place, by TMA.
      launch_grouped_ws(g, true, max_tiles, path.x_rows, path.stages);
      note_kernel(path, kUp, "ws dense");
      return {};
    }
    if (refusal.empty() && kUp && g.gather && path.x_stage && up_stages_x(g.K, g.N, max_tiles, g.E)) {
      // The routed rows copied once in sorted order, then by TMA.
      GemmArgs staged;
      if (stage_up_rows(g, path, staged)) {
        launch_grouped_ws(staged, true, max_tiles, path.x_stage_rows, path.stages);
        note_kernel(path, kUp, "ws staged");
        return {};
      }
    }
    if (refusal.empty()) {
      // The up-projection on the wgmma kernel where forced or where the heuristic says so and
      // that kernel applies; else, and for the down-projection, the warp-specialized kernel.
      const KernelOverride ov = grouped_kernel_override();
      const bool wgmma_up = kUp && (ov == KernelOverride::wgmma ||
                                    (ov == KernelOverride::none && g.gather && fused_up_gathers_on_wgmma(g.K)));
      if (wgmma_up && launch_grouped_wgmma(g, kUp, max_tiles, a_rows)) {
        note_kernel(path, kUp, "wgmma");
        return {};
      }
      launch_grouped_ws(g, kUp, max_tiles, a_rows, path.stages);
      note_kernel(path, kUp, "ws");
      return {};
    }
  }
  if (max_tiles <= 0 || g.N <= 0) return refusal;
  if (launch_grouped_wgmma(g, kUp, max_tiles, a_rows)) {
    note_kernel(path, kUp, "wgmma");
    return refusal;
  }
  note_kernel(path, kUp, "mma.sync");
  const bool aligned = g.K % 8 == 0 && g.lda % 8 == 0 && aligned16(g.A) && aligned16(g.B);
  const std::int64_t cols_per_block = kUp && g.gated ? kBN / 2 : kBN;
  const std::int64_t ntiles = (g.N + cols_per_block - 1) / cols_per_block;
  check_arg(max_tiles <= 65535, "row tiles", max_tiles, "<= 65535 per grouped launch");
  check_arg(ntiles <= 65535, "column tiles", ntiles, "<= 65535 per grouped launch");
  const dim3 grid(static_cast<unsigned>(ntiles), static_cast<unsigned>(max_tiles));
  constexpr int smem = Tiles::smem_bytes();
  auto kernel = aligned ? grouped_gemm_kernel<kUp, true> : grouped_gemm_kernel<kUp, false>;
  TILEMOE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kernel<<<grid, kThreads, smem, current_stream()>>>(g);
  TILEMOE_CHECK_LAUNCH();
  return refusal;
}

}  // namespace

int grouped_tile_m() { return kBM; }

namespace {

GemmArgs up_args(const std::uint16_t* x, std::int64_t d, const std::uint16_t* w13, std::int64_t n, bool gated,
                 Activation act, int E, const std::int64_t* offsets, const std::int32_t* tile_offsets,
                 const std::int32_t* gather, std::uint16_t* a_out, std::int64_t lda_act) {
  GemmArgs g{};
  g.A = reinterpret_cast<const __nv_bfloat16*>(x);
  g.lda = d;
  g.gather = gather;
  g.a_local = true;
  g.B = reinterpret_cast<const __nv_bfloat16*>(w13);
  g.b_expert_stride = (gated ? 2 * n : n) * d;
  g.K = d;
  g.N = n;
  g.gated = gated;
  g.act = act;
  g.offsets = offsets;
  g.tile_offsets = tile_offsets;
  g.E = E;
  g.C = reinterpret_cast<__nv_bfloat16*>(a_out);
  g.ldc = lda_act;
  return g;
}

GemmArgs down_args(const std::uint16_t* act, std::int64_t lda_act, std::int64_t n, const std::uint16_t* w2,
                   std::int64_t d, int E, const std::int64_t* offsets, const std::int32_t* tile_offsets,
                   std::uint16_t* y) {
  GemmArgs g{};
  g.A = reinterpret_cast<const __nv_bfloat16*>(act);
  g.lda = lda_act;
  g.gather = nullptr;
  g.a_local = false;
  g.B = reinterpret_cast<const __nv_bfloat16*>(w2);
  g.b_expert_stride = d * n;
  g.K = n;
  g.N = d;
  g.gated = false;
  g.act = Activation::relu;  // unused
  g.offsets = offsets;
  g.tile_offsets = tile_offsets;
  g.E = E;
  g.C = reinterpret_cast<__nv_bfloat16*>(y);
  g.ldc = d;
  return g;
}

}  // namespace

std::string grouped_up(const std::uint16_t* x, std::int64_t d, const std::uint16_t* w13, std::int64_t n, bool gated,
                       Activation act, int E, const std::int64_t* offsets, const std::int32_t* tile_offsets,
                       std::int64_t max_tiles, const std::int32_t* gather, std::uint16_t* a_out,
                       std::int64_t lda_act, const GroupedPath& path) {
  return launch<true>(up_args(x, d, w13, n, gated, act, E, offsets, tile_offsets, gather, a_out, lda_act), max_tiles, 0,
                      path);
}

std::string grouped_down(const std::uint16_t* act, std::int64_t lda_act, std::int64_t n, const std::uint16_t* w2,
                         std::int64_t d, int E, const std::int64_t* offsets, const std::int32_t* tile_offsets,
                         std::int64_t max_tiles, std::int64_t a_rows, std::uint16_t* y, const GroupedPath& path) {
  return launch<false>(down_args(act, lda_act, n, w2, d, E, offsets, tile_offsets, y), max_tiles, a_rows, path);
}

bool grouped_up_down(const std::uint16_t* x, std::int64_t d, const std::uint16_t* w13, std::int64_t n, bool gated,
                     Activation act, int E, const std::int64_t* offsets, const std::int32_t* tile_offsets,
                     std::int64_t max_tiles, const std::int32_t* gather, std::uint16_t* a_out, std::int64_t lda_act,
                     const std::uint16_t* w2, std::int64_t a_rows, std::uint16_t* y, const GroupedPath& path_up) {
  if (!path_up.fused || !path_up.x_stage || !gather || !ws_pair(max_tiles, E) || max_tiles <= 0 ||
      grouped_kernel_override() != KernelOverride::none || !up_stages_x(d, n, max_tiles, E))
    return false;
  const GemmArgs up = up_args(x, d, w13, n, gated, act, E, offsets, tile_offsets, gather, a_out, lda_act);
  const GemmArgs down = down_args(a_out, lda_act, n, w2, d, E, offsets, tile_offsets, y);
  if (!ws_refusal(up, true, 0).empty() || !ws_refusal(down, false, a_rows).empty()) return false;
  // The routed rows staged in sorted order (in y, not yet written), then read by TMA.
  GemmArgs staged;
  if (!stage_up_rows(up, path_up, staged)) return false;
  launch_grouped_ws_pair(staged, down, max_tiles, path_up.x_stage_rows, a_rows, path_up.stages);
  note_kernel(path_up, true, "and down ws pair");
  return true;
}

}  // namespace tilemoe::detail::gpu
