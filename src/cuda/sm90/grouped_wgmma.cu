// The grouped GEMMs on Hopper (sm_90a): the same function as grouped_gemm.cu's kernel (row-tile
// list from tile_offsets, x rows gathered in the loads, gate/up pairs and the activation in the
// epilogue), with wgmma instead of mma.sync.
// Block: 2 warpgroups (256 threads), tile 128 x 256 x 64; warpgroup g owns rows 64 g .. 64 g + 63
// and issues wgmma.m64n256k16 from shared-memory descriptors (fp32 accumulators, 128 per
// thread). Every thread loads with cp.async (a gather has no tensor-map form) into the 128-byte
// swizzle layout wgmma reads (1024-byte aligned atoms of 8 rows), 4 stages (192 KiB), one block
// per SM. Per k tile: wait for the stage, fence.proxy.async (cp.async writes -> wgmma reads),
// barrier, prefetch the stage two ahead, 4 wgmma, commit, wait for the previous batch.
// Assumes K, lda and the expert stride are multiples of 8 elements and the operands 16-byte
// aligned (the launcher checks; grouped_gemm.cu covers the rest). Other archs trap.
#include <cuda_bf16.h>

#include <type_traits>

#include "../context.cuh"
#include "../activation.cuh"
#include "../grouped_gemm.cuh"
#include "../heuristics.hpp"
#include "../ptx/cp_async.cuh"
#include "../ptx/pipeline.cuh"
#include "../ptx/wgmma.cuh"

namespace tilemoe::detail::gpu {
namespace {

constexpr int kBM = 128, kBN = 256, kBK = 64, kStages = 4, kThreads = 256;
constexpr int kStageBytes = (kBM + kBN) * kBK * 2;          // 48 KiB, a multiple of 1024
constexpr int kSmemBytes = kStages * kStageBytes + 1024;   // + room to align the base to 1024
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
constexpr int kAPasses = kBM / 32, kBPasses = kBN / 32;    // 32 rows of 8 chunks per pass

// The 128-byte swizzle: chunk c of row r at r * 128 + ((c ^ (r % 8)) * 16), from a 1024-aligned base.
__device__ __forceinline__ std::uint32_t swz(int row, int chunk) {
  return static_cast<std::uint32_t>(row * 128 + ((chunk ^ (row & 7)) << 4));
}
#endif

// kFixed: a gated up-projection whose activation kAct is fixed at compile time; the run-time
// switch on g.act (kept for the other cases), unrolled 64 times, made the code large enough for
// instruction-fetch stalls (ncu, run 10).
// kStaged (a fixed gated activation whose output rows are 16-byte aligned: N, ldc multiples of 8,
// C aligned): the epilogue writes each warpgroup's 64 x 128 bf16 outputs into shared memory
// (16-byte chunks XOR-swizzled by row, conflict-free both ways) and stores them as 16-byte rows,
// instead of 4-byte stores straight from the accumulators.
template <bool kUp, bool kFixed, Activation kAct, bool kStaged>
__global__ void __launch_bounds__(kThreads, 1) grouped_wgmma_kernel(const GemmArgs g) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const TileCoord tc = raster_tile(std::int64_t(blockIdx.y) * gridDim.x + blockIdx.x, gridDim.y, gridDim.x,
                                    kRasterRows);
  const int tile = tc.row;
  if (tile >= g.tile_offsets[g.E]) return;
  const RowTile rt = find_row_tile_warp<kBM>(g, tile);
  const int e = rt.expert, rows = rt.rows;
  const std::int64_t m0 = rt.m0;
  const int tid = threadIdx.x;
  const bool gated = kUp && g.gated;
  const std::int64_t j0 = gated ? std::int64_t(tc.col) * (kBN / 2) : std::int64_t(tc.col) * kBN;

  const int lr = tid >> 3, lc = tid & 7;
  const __nv_bfloat16* a_src[kAPasses];
  const __nv_bfloat16* b_src[kBPasses];
  unsigned a_ok = 0, b_ok = 0;
#pragma unroll
  for (int i = 0; i < kAPasses; ++i) {
    const int r = lr + 32 * i;
    std::int64_t arow = 0;
    if (r < rows) {
      a_ok |= 1u << i;
      const std::int64_t p = m0 + r;
      arow = g.gather ? std::int64_t(g.gather[p]) : (g.a_local ? p - g.offsets[e] : p);
    }
    a_src[i] = g.A + arow * g.lda;
  }
  const __nv_bfloat16* Be = g.B + std::int64_t(e) * g.b_expert_stride;
#pragma unroll
  for (int i = 0; i < kBPasses; ++i) {
    const int r = lr + 32 * i;
    std::int64_t col, brow;
    if (gated) {
      const int w = r & 15;
      col = j0 + (r >> 4) * 8 + (w & 7);
      brow = w < 8 ? col : g.N + col;
    } else {
      col = j0 + r;
      brow = col;
    }
    if (col < g.N) b_ok |= 1u << i;
    b_src[i] = Be + (col < g.N ? brow : 0) * g.K;
  }

  const std::uint32_t sbase = (static_cast<std::uint32_t>(__cvta_generic_to_shared(smem_raw)) + 1023u) & ~1023u;
  auto sA = [&](int s) { return sbase + s * kStageBytes; };
  auto sB = [&](int s) { return sbase + s * kStageBytes + kBM * kBK * 2; };
  const int ktiles = static_cast<int>((g.K + kBK - 1) / kBK);
  auto load_stage = [&](int s, int kt) {
    const std::int64_t k0 = std::int64_t(kt) * kBK + lc * 8;
    const bool kin = k0 < g.K;
    // Rows past the tile's count are not loaded at all: output row r depends on A row r only,
    // and those rows are never stored. The k tail of real rows is zero-filled.
#pragma unroll
    for (int i = 0; i < kAPasses; ++i)
      if ((a_ok >> i) & 1u) ptx::cp_async_cg_16(sA(s) + swz(lr + 32 * i, lc), kin ? a_src[i] + k0 : g.A, kin ? 16 : 0);
#pragma unroll
    for (int i = 0; i < kBPasses; ++i) {
      const bool ok = kin && ((b_ok >> i) & 1u);
      ptx::cp_async_cg_16(sB(s) + swz(lr + 32 * i, lc), ok ? b_src[i] + k0 : g.B, ok ? 16 : 0);
    }
  };

  float acc[kBN / 2];
#pragma unroll
  for (int i = 0; i < kBN / 2; ++i) acc[i] = 0.0f;
  // Loads run two stages ahead and one wgmma batch stays in flight: the slot refilled at k tile
  // kt is the one of kt - 2, whose wgmma every warpgroup has waited for before the barrier.
#pragma unroll
  for (int s = 0; s < kStages - 2; ++s) {
    if (s < ktiles) load_stage(s, s);
    ptx::cp_async_commit_group();
  }
  const int wg = tid >> 7;
  // A warpgroup whose 64 rows are all past the tile's count (an expert's last tile, and most
  // tiles at decode sizes, where experts hold a few rows) loads but issues no wgmma: at T 64
  // that halves the tensor-core work, which otherwise competes with the weight stream.
  const bool active = wg * 64 < rows;
  for (int kt = 0; kt < ktiles; ++kt) {
    ptx::cp_async_wait_group<kStages - 3>();
    ptx::fence_proxy_async_shared();
    __syncthreads();
    const int pf = kt + kStages - 2;
    if (pf < ktiles) load_stage(pf % kStages, pf);
    ptx::cp_async_commit_group();
    const int s = kt % kStages;
    if (active) {
      ptx::wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) {
        const std::uint64_t da = ptx::smem_desc_sw128(sA(s) + wg * 64 * 128 + kk * 32);
        const std::uint64_t db = ptx::smem_desc_sw128(sB(s) + kk * 32);
        ptx::wgmma_m64n256k16_bf16(acc, da, db, 1);
      }
      ptx::wgmma_commit_group();
      ptx::wgmma_wait_group<1>();
    }
  }
  ptx::wgmma_wait_group<0>();
  ptx::cp_async_wait_group<0>();

  // Accumulator j of a thread: n8 block j / 4, row 16 * warp + lane / 4 (+ 8 for j % 4 >= 2),
  // columns 2 * (lane % 4) + j % 2 of the block.
  const int t = tid & 127, w = t >> 5, l = t & 31;
  if constexpr (kStaged) {
    __syncthreads();  // every warpgroup's wgmma has read its last stage: the stages are free
    unsigned char* stage = smem_raw + (sbase - static_cast<std::uint32_t>(__cvta_generic_to_shared(smem_raw))) +
                           wg * 64 * 256;  // 64 rows x 128 bf16 of this warpgroup
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int rr = 16 * w + (l >> 2) + 8 * h;
#pragma unroll
      for (int b = 0; b < kBN / 16; ++b) {
        const float v0 = activate_gated<kAct>(acc[8 * b + 2 * h], acc[8 * b + 4 + 2 * h]);
        const float v1 = activate_gated<kAct>(acc[8 * b + 2 * h + 1], acc[8 * b + 4 + 2 * h + 1]);
        *reinterpret_cast<__nv_bfloat162*>(stage + rr * 256 + ((b ^ (rr & 7)) << 4) + (l & 3) * 4) =
            __floats2bfloat162_rn(v0, v1);
      }
    }
    ptx::named_barrier_sync(1 + wg, 128);
#pragma unroll
    for (int q = t; q < 64 * 16; q += 128) {
      const int rr = q >> 4, c = q & 15;
      const int r = wg * 64 + rr;
      const std::int64_t j = j0 + c * 8;
      if (r < rows && j < g.N)
        *reinterpret_cast<uint4*>(g.C + (m0 + r) * g.ldc + j) =
            *reinterpret_cast<const uint4*>(stage + rr * 256 + ((c ^ (rr & 7)) << 4));
    }
    return;
  }
  auto store2 = [&](std::int64_t p, std::int64_t j, float v0, float v1) { store_pair(g, p, j, v0, v1); };
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = wg * 64 + 16 * w + (l >> 2) + 8 * h;
    if (r >= rows) continue;
    const std::int64_t p = m0 + r;
    if (kFixed || gated) {
#pragma unroll
      for (int b = 0; b < kBN / 16; ++b) {
        const std::int64_t j = j0 + b * 8 + 2 * (l & 3);
        const float g0 = acc[8 * b + 2 * h], u0 = acc[8 * b + 4 + 2 * h];
        const float g1 = acc[8 * b + 2 * h + 1], u1 = acc[8 * b + 4 + 2 * h + 1];
        if constexpr (kFixed)
          store2(p, j, activate_gated<kAct>(g0, u0), activate_gated<kAct>(g1, u1));
        else
          store2(p, j, activate(g.act, g0, u0), activate(g.act, g1, u1));
      }
    } else if constexpr (!kFixed) {
#pragma unroll
      for (int q = 0; q < kBN / 8; ++q) {
        const std::int64_t j = j0 + q * 8 + 2 * (l & 3);
        float v0 = acc[4 * q + 2 * h], v1 = acc[4 * q + 2 * h + 1];
        if (kUp) {
          v0 = activate(g.act, v0, 0.0f);
          v1 = activate(g.act, v1, 0.0f);
        }
        store2(p, j, v0, v1);
      }
    }
  }
#else
  if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0)
    printf("tilemoe: grouped_wgmma_kernel needs sm_90a (H100/H200); this GPU runs another arch\n");
  __trap();
#endif
}

bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15) == 0; }

}  // namespace

bool launch_grouped_wgmma(const GemmArgs& g, bool up, std::int64_t max_tiles) {
  const KernelOverride ov = grouped_kernel_override();
  if (ov == KernelOverride::mma) return false;
  const bool fixed = up && g.gated && gated_fixed(g.act);
  if (ov != KernelOverride::wgmma && !prefer_wgmma(up, fixed, g.K)) return false;
  const DeviceProps& dp = device_props();
  if (dp.cc_major != 9 || dp.cc_minor != 0) return false;
  if (dp.smem_optin < static_cast<std::size_t>(kSmemBytes)) return false;
  if (g.K % 8 != 0 || g.lda % 8 != 0 || !aligned16(g.A) || !aligned16(g.B)) return false;
  if (max_tiles <= 0 || g.N <= 0) return true;
  const std::int64_t cols = up && g.gated ? kBN / 2 : kBN;
  const std::int64_t ntiles = (g.N + cols - 1) / cols;
  check_arg(max_tiles <= 65535, "row tiles", max_tiles, "<= 65535 per grouped launch");
  const dim3 grid(static_cast<unsigned>(ntiles), static_cast<unsigned>(max_tiles));
  // Staged 16-byte stores where the output rows allow them (the A/B against direct 4-byte
  // stores: docs/hopper.md, "Session 4").
  const bool staged = fixed && g.N % 8 == 0 && g.ldc % 8 == 0 && aligned16(g.C);
  auto gated_kernel = [&](auto stage_tag) {  // the instantiation of g.act, staged or not
    constexpr bool kS = decltype(stage_tag)::value;
    return g.act == Activation::swiglu  ? grouped_wgmma_kernel<true, true, Activation::swiglu, kS>
           : g.act == Activation::geglu ? grouped_wgmma_kernel<true, true, Activation::geglu, kS>
                                        : grouped_wgmma_kernel<true, true, Activation::clamped_swiglu, kS>;
  };
  auto kernel = !up      ? grouped_wgmma_kernel<false, false, Activation::relu, false>
                : !fixed ? grouped_wgmma_kernel<true, false, Activation::relu, false>
                : staged ? gated_kernel(std::true_type{})
                         : gated_kernel(std::false_type{});
  TILEMOE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  kernel<<<grid, kThreads, kSmemBytes, current_stream()>>>(g);
  TILEMOE_CHECK_LAUNCH();
  return true;
}

}  // namespace tilemoe::detail::gpu
