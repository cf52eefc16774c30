// The grouped GEMMs on Hopper (sm_90a): the same function as grouped_gemm.cu's kernel (row-tile
// list from tile_offsets, x rows gathered in the loads, gate/up pairs and the activation in the
// epilogue), with wgmma instead of mma.sync.
// Block: 2 warpgroups (256 threads), tile 128 x 256 x 64; warpgroup g owns rows 64 g .. 64 g + 63
// and issues wgmma.m64n256k16 from shared-memory descriptors (fp32 accumulators, 128 per
// thread). Every thread gathers x rows with cp.async (a gather has no tensor-map form) into the
// 128-byte swizzle layout wgmma reads (1024-byte aligned atoms of 8 rows), 4 stages (192 KiB),
// one block per SM; the weights come by TMA in the fixed gated up-projection and the
// down-projection (kTmaB below), by cp.async otherwise. Per k tile: wait for the stage, fence.proxy.async (cp.async writes -> wgmma reads),
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
#include "../tensor_map.cuh"

namespace tilemoe::detail::gpu {
namespace {

constexpr int kBM = 128, kBN = 256, kBK = 64, kStages = 4, kThreads = 256;
constexpr int kStageBytes = (kBM + kBN) * kBK * 2;          // 48 KiB, a multiple of 1024
constexpr int kSmemBytes = kStages * kStageBytes + 1024 + kStages * 8;  // + alignment room, + barriers (kTmaB)
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
// kTmaB (a fixed gated activation over contiguous weights [E, 2 N, K]): one thread loads each
// stage's weights by TMA, the 128 gate rows and the 128 up rows of the tile's outputs as two
// boxes completing on the stage's mbarrier, and the threads gather only the x rows; accumulator
// columns c < 128 are then gates and c + 128 their ups (without it, gate and up rows alternate
// in groups of 8). A third of the cp.async copies and most of the loads' address arithmetic go
// (the stall samples of the all-cp.async kernel sat on that arithmetic, run 55). H200 run 56, up-projection
// ms, TMA vs cp.async weights (two runs each): sonic-7b 0.604 / 0.604 vs 0.635 / 0.625, Mixtral
// 3.670 / 3.624 vs 3.788 / 3.796, d 4096 n 1024 7.756 / 7.896 vs 8.153 / 8.181, Qwen3-30B-A3B
// 1.675 / 1.668 vs 1.709 / 1.608. The down-projection (contiguous weights [E, N, K]) the same
// way, one box of kBN weight rows per stage (rows past N are the next expert's: loaded, never
// stored): 7-17% off the down-projection (heuristics.hpp, wgmma_tma_weights: H200 runs 153-154).
// kTmaA (the down-projection over contiguous activation rows, with kTmaB): the same thread loads
// the tile's 128 rows of A as one more box on the stage's mbarrier (rows past the expert's count
// are the next expert's, or past A's end and zero-filled: loaded, never stored), so that no
// thread copies anything and the k loop is the wait, the barrier and the wgmma batch: 1-6% off
// the down-projection again (heuristics.hpp, wgmma_tma_rows).
// kStaged (a fixed gated activation whose output rows are 16-byte aligned: N, ldc multiples of 8,
// C aligned): the epilogue writes each warpgroup's 64 x 128 bf16 outputs into shared memory
// (16-byte chunks XOR-swizzled by row, conflict-free both ways) and stores them as 16-byte rows,
// instead of 4-byte stores straight from the accumulators.
template <bool kUp, bool kFixed, Activation kAct, bool kStaged, bool kTmaB, bool kTmaA = false>
__global__ void __launch_bounds__(kThreads, 1)
    grouped_wgmma_kernel(const GemmArgs g, const __grid_constant__ CUtensorMap map_b,
                         const __grid_constant__ CUtensorMap map_a, bool expert_raster) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(!kTmaB || !kUp || kFixed, "TMA weights: the fixed gated up-projection, or the down-projection");
  static_assert(!kTmaA || (!kUp && kTmaB), "TMA rows of A: the down-projection, with its weights by TMA");
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const std::int64_t lin = std::int64_t(blockIdx.y) * gridDim.x + blockIdx.x;
  TileCoord tc;
  if (expert_raster) {
    if (lin >= std::int64_t(g.tile_offsets[g.E]) * gridDim.x) return;
  } else {
    tc = raster_tile(lin, gridDim.y, gridDim.x, kRasterRows);
    if (tc.row >= g.tile_offsets[g.E]) return;
  }
  const RowTile rt = tile_at<kBM>(g, lin, gridDim.y, gridDim.x, kRasterRows, expert_raster, tc);
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
  for (int i = 0; i < (kTmaA ? 0 : kAPasses); ++i) {
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
  for (int i = 0; i < (kTmaB ? 0 : kBPasses); ++i) {
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
  unsigned char* const smem_al = smem_raw + (sbase - static_cast<std::uint32_t>(__cvta_generic_to_shared(smem_raw)));
  std::uint64_t* full = reinterpret_cast<std::uint64_t*>(smem_al + kStages * kStageBytes);  // kTmaB: stage s's weights landed
  if constexpr (kTmaB) {
    if (tid == 0) {
      for (int s = 0; s < kStages; ++s) ptx::mbarrier_init(&full[s], 1);
      ptx::fence_barrier_init();
    }
    __syncthreads();
  }
  // Each thread's copies per stage: chunk lc of rows lr + 32 i, which land at soff + 4096 i (the
  // 128-byte swizzle: (lr + 32 i) % 8 is lr % 8). The source pointers already point at chunk lc,
  // and k tiles wholly inside K copy without the range check (the per-copy k-range select and
  // pointer arithmetic were most of the loads' instructions; Nsight Compute, H200 runs 82-83).
#pragma unroll
  for (int i = 0; i < (kTmaA ? 0 : kAPasses); ++i) a_src[i] += lc * 8;
#pragma unroll
  for (int i = 0; i < (kTmaB ? 0 : kBPasses); ++i) b_src[i] += lc * 8;
  const std::uint32_t soff = swz(lr, lc);
  const int full_k = static_cast<int>(g.K / kBK);
  auto load_stage = [&](int s, int kt) {
    const int k0 = kt * kBK;
    // Rows past the tile's count are not loaded at all: output row r depends on A row r only,
    // and those rows are never stored. The k tail of real rows is zero-filled.
    if constexpr (kTmaA) {
      // (below, with the weights)
    } else if (kt < full_k) {
#pragma unroll
      for (int i = 0; i < kAPasses; ++i)
        if ((a_ok >> i) & 1u) ptx::cp_async_cg_16(sA(s) + soff + 4096 * i, a_src[i] + k0);
    } else {
      const bool kin = k0 + lc * 8 < g.K;
#pragma unroll
      for (int i = 0; i < kAPasses; ++i)
        if ((a_ok >> i) & 1u) ptx::cp_async_cg_16(sA(s) + soff + 4096 * i, kin ? a_src[i] + k0 : g.A, kin ? 16 : 0);
    }
    if constexpr (kTmaB) {
      // The slot's previous wgmma reads are complete (every warpgroup waited for them before the
      // block barrier that precedes this call).
      if (tid == 0) {
        ptx::mbarrier_arrive_expect_tx(&full[s], (kTmaA ? kBM + kBN : kBN) * kBK * 2);
        if constexpr (kTmaA)  // the tile's rows of A: sorted position m0 (a dense pass: m0 - offsets[e])
          ptx::tma_load_2d(smem_al + s * kStageBytes, &map_a, kt * kBK,
                           static_cast<int>(g.a_local ? m0 - g.offsets[e] : m0), &full[s]);
        unsigned char* dst = smem_al + s * kStageBytes + kBM * kBK * 2;
        if constexpr (kUp) {  // the gate rows, then the up rows of the same outputs
          const int brow = static_cast<int>(std::int64_t(e) * 2 * g.N + j0);
          ptx::tma_load_2d(dst, &map_b, kt * kBK, brow, &full[s]);
          ptx::tma_load_2d(dst + kBN / 2 * kBK * 2, &map_b, kt * kBK, brow + static_cast<int>(g.N), &full[s]);
        } else {  // the down-projection's kBN output rows (past N: the next expert's, never stored)
          ptx::tma_load_2d(dst, &map_b, kt * kBK, static_cast<int>(std::int64_t(e) * g.N + j0), &full[s]);
        }
      }
    } else {
      const bool kin = k0 + lc * 8 < g.K;
#pragma unroll
      for (int i = 0; i < kBPasses; ++i) {
        const bool ok = kin && ((b_ok >> i) & 1u);
        ptx::cp_async_cg_16(sB(s) + soff + 4096 * i, ok ? b_src[i] + k0 : g.B, ok ? 16 : 0);
      }
    }
  };

  float acc[kBN / 2];
#pragma unroll
  for (int i = 0; i < kBN / 2; ++i) acc[i] = 0.0f;
  // Loads run two stages ahead and one wgmma batch stays in flight: the slot refilled at k tile
  // kt is the one of kt - 2, whose wgmma every warpgroup has waited for before the barrier.
  // The loads of the tile two ahead are issued before the k tile's wgmma batch: the other order
  // (the batch queued first, the copies' ~100 instructions per warp behind it) was 7-11% slower
  // (H200 run 57, up-projection ms: sonic-7b 0.617 -> 0.684, Mixtral 3.71 -> 4.11).
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
    const int s = kt % kStages;
    const int pf = kt + kStages - 2;
    if (pf < ktiles) load_stage(pf % kStages, pf);
    ptx::cp_async_commit_group();
    if constexpr (kTmaB) ptx::mbarrier_wait(&full[s], (kt / kStages) & 1);
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
  // The gate and up accumulators of output chunk b (8 columns), row half h, element i.
  auto gate_at = [&](int b, int h, int i) { return kTmaB ? 4 * b + 2 * h + i : 8 * b + 2 * h + i; };
  auto up_at = [&](int b, int h, int i) { return kTmaB ? 4 * (b + 16) + 2 * h + i : 8 * b + 4 + 2 * h + i; };
  if constexpr (kStaged) {
    __syncthreads();  // every warpgroup's wgmma has read its last stage: the stages are free
    unsigned char* stage = smem_al + wg * 64 * 256;  // 64 rows x 128 bf16 of this warpgroup
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int rr = 16 * w + (l >> 2) + 8 * h;
#pragma unroll
      for (int b = 0; b < kBN / 16; ++b) {
        const float v0 = activate_gated<kAct>(acc[gate_at(b, h, 0)], acc[up_at(b, h, 0)]);
        const float v1 = activate_gated<kAct>(acc[gate_at(b, h, 1)], acc[up_at(b, h, 1)]);
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
        const float g0 = acc[gate_at(b, h, 0)], u0 = acc[up_at(b, h, 0)];
        const float g1 = acc[gate_at(b, h, 1)], u1 = acc[up_at(b, h, 1)];
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

bool launch_grouped_wgmma(const GemmArgs& g, bool up, std::int64_t max_tiles, std::int64_t a_rows) {
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
  // stores: docs/hopper_log.md, "Session 4"); weights by TMA where they are one contiguous [E, 2 N, K]
  // array (heuristics.hpp wgmma_tma_weights).
  const bool staged = fixed && g.N % 8 == 0 && g.ldc % 8 == 0 && aligned16(g.C);
  const bool tma_b = staged && wgmma_tma_weights() && g.b_expert_stride == 2 * g.N * g.K &&
                     g.E * 2 * g.N < (std::int64_t(1) << 31);
  auto gated_kernel = [&](auto stage_tag, auto tma_tag) {  // the instantiation of g.act
    constexpr bool kS = decltype(stage_tag)::value, kT = decltype(tma_tag)::value;
    return g.act == Activation::swiglu  ? grouped_wgmma_kernel<true, true, Activation::swiglu, kS, kT>
           : g.act == Activation::geglu ? grouped_wgmma_kernel<true, true, Activation::geglu, kS, kT>
                                        : grouped_wgmma_kernel<true, true, Activation::clamped_swiglu, kS, kT>;
  };
  // The down-projection's weights by TMA too, where they are one contiguous [E, N, K] array, and
  // its rows of A where they are contiguous (no gather) and their count is known.
  const bool tma_down = !up && wgmma_tma_weights() && g.b_expert_stride == g.N * g.K &&
                        g.E * g.N < (std::int64_t(1) << 31);
  const bool tma_a = tma_down && wgmma_tma_rows() && !g.gather && a_rows > 0 && a_rows < (std::int64_t(1) << 31);
  auto kernel = !up      ? (tma_a      ? grouped_wgmma_kernel<false, false, Activation::relu, false, true, true>
                            : tma_down ? grouped_wgmma_kernel<false, false, Activation::relu, false, true>
                                       : grouped_wgmma_kernel<false, false, Activation::relu, false, false>)
                : !fixed ? grouped_wgmma_kernel<true, false, Activation::relu, false, false>
                : tma_b  ? gated_kernel(std::true_type{}, std::true_type{})
                : staged ? gated_kernel(std::true_type{}, std::false_type{})
                         : gated_kernel(std::false_type{}, std::false_type{});
  const CUtensorMap map_b = tma_b      ? make_tensor_map_bf16(g.B, g.E * 2 * g.N, g.K, g.K, kBN / 2)
                            : tma_down ? make_tensor_map_bf16(g.B, g.E * g.N, g.K, g.K, kBN)
                                       : CUtensorMap{};
  const CUtensorMap map_a = tma_a ? make_tensor_map_bf16(g.A, a_rows, g.K, g.lda, kBM) : CUtensorMap{};
  TILEMOE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  kernel<<<grid, kThreads, kSmemBytes, current_stream()>>>(g, map_b, map_a, expert_raster());
  TILEMOE_CHECK_LAUNCH();
  return true;
}

}  // namespace tilemoe::detail::gpu
