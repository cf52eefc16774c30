// The grouped GEMMs on Hopper, warp-specialized and persistent (sm_90a). Same function as
// grouped_gemm.cu (row tiles from the device-side tile_offsets, x rows gathered, the gated
// activation applied before anything is stored), built the way Hopper wants it:
// - 384 threads: warpgroup 0 produces, warpgroups 1 and 2 consume (64 rows x 256 columns each
//   of a 128 x 256 output tile). setmaxnreg moves registers from the producer (56) to the
//   consumers (224).
// - Persistent: one block per SM walks output tiles in the raster order of expert_raster_tile
//   (grouped_gemm.cuh; raster_tile's with TILEMOE_RASTER=fixed), so the producer loads the next
//   tile while the consumers finish the last one. Tiles are handed out statically (t =
//   blockIdx.x, + gridDim.x, ...) or dynamically (heuristics.hpp ws_dynamic_tiles: wherever every
//   load is by TMA, and at decode sizes): after its first tile a block claims the next one from a
//   device counter, a tile ahead; blocks that drew slower tiles take fewer (H200 run 51, Qwen3-30B-A3B
//   T 64 up-projection 0.321 -> 0.248-0.279 ms; run 84, OLMoE and gpt-oss-120b down-projections
//   6-12% faster).
//   Either way the producer side looks each tile up (expert, first row, rows: device-memory
//   reads) and hands it to the consumers through a two-slot queue in shared memory, ahead of its
//   loads, so that they start a tile without waiting for those reads: down-projection 0.307 ->
//   0.278 ms on sonic-7b, 1.98 -> 1.78 on d 4096 / n 512, 0.680 -> 0.654 on Qwen3-30B-A3B, 0.818
//   -> 0.790 on OLMoE (the K loop is short there, so the lookup was a large part of a tile);
//   up-projections within their spread (H200 run 72, two A/B rounds each, docs/hopper_log.md). Where
//   every load is by TMA a producer warp of its own does the lookups and claims (the scheduler),
//   and the loading thread reads the queue like the consumers.
// - Producer: one thread issues TMA loads of the weight tile (the gated up-projection: 128 gate
//   rows and the 128 up rows of the same outputs; the down-projection: 256 rows), and of the
//   activation tile in the down-projection, into 128-byte-swizzled stages that complete on a
//   "full" mbarrier with their byte count. An up-projection over contiguous rows (a_tma: rows
//   staged in sorted order by gather_rows.cu where heuristics.hpp up_stages_x says so, or a dense
//   pass over x) takes its x rows by TMA too, from one producer warp; the other three exit.
//   Otherwise the 128 producer threads gather the routed x rows with cp.async (Hopper's TMA has
//   no gather), so the gathered copy of x never exists in global memory. Per tile a thread keeps
//   its 8 rows' indices; per k tile a copy is one address multiply-add and the cp.async (the
//   per-copy arithmetic had kept the consumers waiting: Nsight Compute, H200 run 83; since then
//   this kernel, not grouped_wgmma.cu, takes the gathered up-projection). Each thread ends its
//   copies of a stage with cp.async.mbarrier.arrive.noinc: the hardware arrives on the stage's "full" barrier once they
//   have landed, and the thread goes on to the next stage without waiting (the barrier counts
//   1 + 128 arrivals). The consumers, after their wait, fence the copies for the async proxy
//   (cp.async writes -> wgmma reads). Against the earlier producer that waited for its own copies
//   two stages behind and fenced them itself: up-projection 0.764 -> 0.652 ms on sonic-7b,
//   1.994 -> 1.756 on Qwen3-30B-A3B, 4.711 -> 4.329 on Mixtral (H100, run 39, docs/gpu_runs.md).
// - Consumers: per k tile, wait for the stage, 4 wgmma m64n256k16 from shared-memory
//   descriptors, keep one batch in flight and release the previous stage on its "empty" barrier
//   (one arrival per warp). 4 stages of 48 KiB.
// - Epilogue: activation in registers, bf16 outputs staged in shared memory 128 columns at a
//   time (the down-projection's 256 in two rounds, so the staging takes 32 KiB) as 64-column
//   panels in TMA's 128-byte swizzle (conflict-free writes), then, where all 64 rows of a
//   warpgroup are the tile's, TMA stores issued by one thread: the warpgroup goes on (next round,
//   next tile) while they drain, and waits for them only before it stages again. A warpgroup with rows past
//   an expert's count (they belong to the next expert's tile) stores 16-byte chunks itself, with
//   the row and column predicates.
// - Pair mode (decode sizes, heuristics.hpp ws_pair): one launch runs both projections, every
//   up-projection tile (staged rows by TMA, writing act) and then every down-projection tile
//   (reading act), all claimed from the device counter. Each consumer warp releases a count per
//   row tile once its part of an up tile is written (its stores, and thread 0's TMA stores waited
//   for); the loading thread acquires that count (8 per column tile) before a down tile's loads,
//   then fences for the async proxy. A down tile thus waits only for up tiles claimed before it
//   by running blocks (no tile belongs to a block by its index in this mode), and the SMs that
//   ran out of up tiles go on with down tiles instead of idling through the up-projection's last
//   ~1 MB tiles. Graph-replayed layer, two launches -> one (H200, same-run A/B): Qwen3-30B-A3B
//   T 64 0.336-0.338 -> 0.315-0.317 ms (runs 98, 100), 0.337 -> 0.328-0.329 (run 101); OLMoE
//   T 256 0.258-0.261 -> 0.246-0.248 (runs 98, 100), 0.260 -> 0.250-0.251 (run 101).
//   The consumers arrive on the tile queue per thread (in every mode since run 150): with one
//   arrival per warp after __syncwarp, racecheck reported the slot's rewrite racing with the
//   lanes' reads of it (runs 98-101; clean since, run 102).
// - Clusters (heuristics.hpp ws_cluster_size; the gathering up-projection above decode sizes):
//   blocks in clusters of 2 (or 4) take that many consecutive row tiles of one column tile (a
//   unit; static schedule). Units start at each expert's first row (expert_of_unit_warp), so all
//   of a unit's rows are one expert's, and are walked in groups down an expert's rows, then
//   across its columns, every other group's columns in reverse (serpentine);
//   TILEMOE_WS_CLUSTER_UNITS=fixed takes units of consecutive row tiles in raster_tile's order
//   instead (a unit may then span two experts, whose weights load in each block), and
//   TILEMOE_WS_SERPENTINE=0 the columns in order. Where a unit is one expert's, each
//   block's TMA thread loads one slice of the weight tile into every block of the cluster
//   (multicast; its "full" barrier counts the whole tile as before), and the consumer warps
//   release each stage to every block's producer (remote mbarrier arrivals at CTA scope: with a
//   cluster-scope release they cost the up-projection 37%, H200 run 115). A third less traffic
//   from L2 per block with two: d 4096 / n 1024 up-projection 7.40, 7.36 -> 7.00, 6.85 ms (H200
//   run 116), 8.82, 8.92 -> 8.35, 8.23 (run 117, a hotter card; docs/hopper_log.md).
// - Ping-pong down-projection (kModeDownPP, heuristics.hpp ws_pingpong; the default): each
//   consumer warpgroup takes every other tile of the block, 128 rows x 192 columns of its own
//   (two m64n192 accumulators over the same weight box, SonicMoE's tile for n below 1024; with
//   128 x 128 tiles it was 3-10% slower than the cooperative tile, H200 run 122), reading only
//   its own tiles' stages (it passes over the other's, the tiles having one K) and its own slot
//   of the tile queue, so that one warpgroup's epilogue runs while the other's math does (their
//   k loops take turns: order barriers, below); the stage layout is the cooperative one's (a k
//   step uses 40 of its 48 KiB), and the epilogue stages a 64-row half of the tile in two rounds
//   (128, then 64 columns) in the warpgroup's 16 KiB.
// The launcher takes it where it applies (H100/H200, K, N, strides multiples of 8, 16-byte
// aligned operands; up-projections gated); everything else goes to grouped_gemm.cu.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>

#include "../activation.cuh"
#include "../context.cuh"
#include "../grouped_gemm.cuh"
#include "../heuristics.hpp"
#include "../ptx/cp_async.cuh"
#include "../ptx/pipeline.cuh"
#include "../ptx/wgmma.cuh"
#include "../tensor_map.cuh"

namespace tilemoe::detail::gpu {
namespace {

constexpr int kBM = 128, kBN = 256, kBK = 64, kThreads = 384;
constexpr int kTileBytesA = kBM * kBK * 2, kTileBytesB = kBN * kBK * 2;

// A tile as the producer hands it to the consumers: its index in the launch's order (>= the
// tile count: none left), first sorted row, rows, expert, column tile and row tile; in a cluster
// launch whether the two blocks' row tiles share the expert (its weight tile multicast).
struct TileSlot {
  long long t;
  long long m0;
  int rows, expert, col, row, shared;
};

template <bool kUp>
struct WsShape {
  static constexpr int kStages = 4;  // at most
  static constexpr int kOutCols = kUp ? kBN / 2 : kBN;  // output columns of a tile
  // The epilogue stages 128 columns at a time (the down-projection's 256 in two rounds), so the
  // staged output takes 32 KiB and four 48 KiB stages fit.
  static constexpr int kRoundCols = 128;
  static constexpr int kRounds = kOutCols / kRoundCols;
  static constexpr int kPanelBytes = 64 * 128;  // a staged output panel: 64 rows x 64 columns, a TMA store's box
  static constexpr int kStageBytes = kTileBytesA + kTileBytesB;  // 48 KiB, a multiple of 1024
  static constexpr int kOutBytes = kBM * kRoundCols * 2;
  // + full and empty barriers per stage, the tile queue's two full and two empty barriers, the
  // ping-pong's two order barriers and the queue's two slots
  static constexpr int kSmem =
      1024 + kStages * kStageBytes + kOutBytes + 2 * kStages * 8 + 6 * 8 + 2 * static_cast<int>(sizeof(TileSlot));
};
template <bool kUp>
constexpr bool panels_fill_output() {  // two warpgroups' rows x a round's 64-column panels
  return WsShape<kUp>::kOutBytes == 2 * (WsShape<kUp>::kRoundCols / 64) * WsShape<kUp>::kPanelBytes &&
         WsShape<kUp>::kRounds * WsShape<kUp>::kRoundCols == WsShape<kUp>::kOutCols;
}
static_assert(panels_fill_output<true>() && panels_fill_output<false>(), "the staged output is whole panels");
static_assert(WsShape<true>::kSmem <= 232448 && WsShape<false>::kSmem <= 232448, "over the sm_90 shared memory");

static_assert(WsShape<true>::kSmem == WsShape<false>::kSmem &&
                  WsShape<true>::kStageBytes == WsShape<false>::kStageBytes,
              "one shared-memory layout for both projections (a pair launch runs both)");

// What a launch runs: one projection (up or down), or both in turn (pair, decode sizes): every
// up-projection tile first, then every down-projection tile, a down tile's loads waiting until
// the up-projection has written all of its row tile's activations.
// DownPP: the down-projection in ping-pong: each consumer warpgroup takes every other tile of
// the block, 128 rows x kBNpp columns of its own (two m64n192 accumulators), so that one's
// epilogue runs while the other's math does (the tiles' K loops are short where n is small).
enum WsMode { kModeUp = 0, kModeDown = 1, kModePair = 2, kModeDownPP = 3 };
constexpr int kBNpp = 192, kTileBytesBpp = kBNpp * kBK * 2;
static_assert(kTileBytesA + kTileBytesBpp <= WsShape<false>::kStageBytes, "a ping-pong k step fits in a stage");

// One projection of a launch: its tensor maps (weights, TMA-loaded rows of A, output), its
// arguments and its column tiles per row tile.
struct WsPass {
  CUtensorMap map_b, map_a, map_c;
  GemmArgs g;
  int ncol;
};
// How a launch walks its tiles. counters (dynamic schedule; null: static): [0] the next tile to
// claim, [1] blocks done claiming, [2] consumer warps done (pair); row_done (pair): per row
// tile, how many (column tile, consumer warp) parts of its up-projection have been written. The
// last block to finish claiming resets [0] and [1], the last consumer warp done resets [2] and
// row_done, so that every launch finds them zero.
// csize: the blocks run in clusters of csize (1, 2 or 4) over units of csize row tiles (static
// schedule; below); mcast, lock: whether a unit's shared weight tile is multicast, and its stages
// released to every block of the cluster (an A/B of the two; lock whenever mcast).
// expert_units: a cluster's unit is csize row tiles from an expert's first row on (never two
// experts'; expert_of_unit_warp), walked in groups of units down an expert's rows, then across
// its columns, every other group's columns in reverse (serpentine: a group starts on the column
// whose weights the last one ended on); else units of consecutive row tiles in raster_tile's
// order (they may span two experts, whose weights then load in each block).
struct WsCtl {
  int group_rows, stages;
  int* counters;
  int* row_done;
  bool a_tma, expert_raster;
  int csize;
  bool mcast, lock, expert_units, serpentine;
  // The gathering producer's weight loads from a rotating warp (heuristics.hpp ws_tma_rotate). Its
  // row copies hint a 256-byte L2 prefetch (the row's next k step; H200 run 125: d 4096 / n 512
  // 6.44, 6.49 -> 5.96 ms, the other layers 0-3% faster than without; an L2 eviction priority
  // on them was slower, run 127).
  bool tma_rotate;
};

// The weight tile of a k step (kBN rows: the up-projection's 128 gate and 128 up rows, the
// down-projection's 256 output rows) comes in this many TMA boxes of kBN / slices rows: one per
// block of a cluster (each loads its own into every block), at least the two halves of the
// up-projection.
__host__ __device__ constexpr int weight_slices(bool up, int csize) {
  return csize > (up ? 2 : 1) ? csize : (up ? 2 : 1);
}

// Calls f(std::integral_constant<int, i>) for i in the sequence, in order (the epilogue's rounds:
// constant accumulator indices in each).
template <int... I, class F>
__device__ __forceinline__ void for_each_round(std::integer_sequence<int, I...>, F&& f) {
  (f(std::integral_constant<int, I>{}), ...);
}

template <int kMode, Activation kAct>
__global__ void __launch_bounds__(kThreads, 1)
    grouped_ws_kernel(const __grid_constant__ WsPass p0, const __grid_constant__ WsPass p1, const WsCtl ctl) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Shape = WsShape<true>;  // the layout both projections share
  constexpr int kStages = Shape::kStages;
  constexpr bool kPair = kMode == kModePair;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const std::uint32_t raw = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem_raw));
  unsigned char* smem = smem_raw + (((raw + 1023u) & ~1023u) - raw);
  const std::uint32_t sbase = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem));
  unsigned char* out_stage = smem + kStages * Shape::kStageBytes;
  std::uint64_t* full = reinterpret_cast<std::uint64_t*>(out_stage + Shape::kOutBytes);
  std::uint64_t* empty = full + kStages;  // barriers 0 .. stages - 1 are used
  // The producer's first warp finds each tile's expert, rows and column once and its thread 0
  // publishes them in slot q of a two-slot queue (q_full[q] completes when it is written,
  // q_empty[q] when the 8 consumer warps have read it), so the consumers start a tile without
  // its lookups' memory latency. Dynamic schedule: ctl.counters not null.
  std::uint64_t* q_full = empty + kStages;
  std::uint64_t* q_empty = q_full + 2;
  // Ping-pong: order[w] completes when consumer warpgroup w has waited for every stage of its
  // tile (below).
  std::uint64_t* order = q_empty + 2;
  volatile TileSlot* tile_q = reinterpret_cast<volatile TileSlot*>(order + 2);
  const bool dynamic = ctl.counters != nullptr;
  const int stages = ctl.stages;
  auto write_slot = [](volatile TileSlot& q, const TileSlot& v) {
    q.t = v.t;
    q.m0 = v.m0;
    q.rows = v.rows;
    q.expert = v.expert;
    q.col = v.col;
    q.row = v.row;
    q.shared = v.shared;
  };
  auto read_slot = [](const volatile TileSlot& q) {
    return TileSlot{q.t, q.m0, q.rows, q.expert, q.col, q.row, q.shared};
  };
  // The up-projection's producer threads gather the x rows with cp.async, unless its rows are
  // contiguous (staged by gather_rows, or a dense pass) and come by TMA like the weights.
  const bool gather = kMode == kModeUp && !ctl.a_tma;
  constexpr bool kPP = kMode == kModeDownPP;
  auto stage_a = [&](int s) { return s * Shape::kStageBytes; };  // byte offsets from smem
  auto stage_b = [&](int s) { return s * Shape::kStageBytes + kTileBytesA; };

  const int wg = threadIdx.x >> 7, tid = threadIdx.x & 127;
  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) {
      // Gathered up-projection: the TMA thread's expect_tx arrival + one per producer thread (its
      // copies landed); else the TMA thread's alone. One arrival per consumer warp frees a stage.
      ptx::mbarrier_init(&full[s], gather ? 1 + 128 : 1);
      // In a cluster the other blocks' consumer warps arrive too: their producers write slices of
      // this block's weight tile (multicast), and this one a slice of theirs.
      // Ping-pong: one warpgroup reads a stage.
      ptx::mbarrier_init(&empty[s], kPP ? 4 : ctl.csize > 1 && ctl.lock ? 8 * ctl.csize : 8);
    }
    for (int q = 0; q < 2; ++q) {
      ptx::mbarrier_init(&q_full[q], 1);
      // The consumers' arrivals, one per thread (below; ping-pong: slot q holds warpgroup q's
      // tiles only), + the TMA thread's, which reads the slots too where the scheduler is a warp
      // of its own.
      ptx::mbarrier_init(&q_empty[q], (kPP ? 128 : 256) + (gather ? 0 : 1));
      ptx::mbarrier_init(&order[q], 4);  // a warpgroup's warps
    }
    ptx::fence_barrier_init();
  }
  __syncthreads();
  // A cluster's blocks: both have initialized their barriers before either signals the other's.
  const int cs = ctl.csize;
  const bool cl = cs > 1;
  const std::uint32_t crank = cl ? ptx::cluster_ctarank() : 0;
  if (cl) ptx::cluster_sync();

  // The ping-pong's order barriers: one arrival per consumer warp, once all its lanes got there
  // (__syncwarp before lane 0's arrival).
  auto arrive = [&](std::uint64_t* bar) {
    __syncwarp();
    if ((threadIdx.x & 31) == 0) ptx::mbarrier_arrive(bar);
  };
  // A consumer warp hands stage st back: to this block's producer and, in a cluster, to the
  // other blocks', which multicast into it.
  auto release = [&](int st) {
    __syncwarp();
    if ((threadIdx.x & 31) == 0) {
      ptx::mbarrier_arrive(&empty[st]);
      if (cl && ctl.lock)
        for (int r = 1; r < cs; ++r) ptx::mbarrier_arrive_remote(&empty[st], (crank + r) % cs);
    }
  };

  // Both projections of a pair share the row tiles (the same offsets and tile_offsets).
  const int nrow = p0.g.tile_offsets[p0.g.E];
  // A cluster launch walks units of cs row tiles, one per block: its tiles are the units' (not a
  // pair launch). Units from each expert's first row (counted by every warp, which all need the
  // total), or of consecutive row tiles.
  const bool eu = cl && ctl.expert_units;
  const int nunit = eu ? count_units_warp(p0.g, kBM * cs) : (nrow + cs - 1) / cs;
  const long long total0 = static_cast<long long>(nunit) * p0.ncol;  // p0's tiles
  const long long total = total0 + (kPair ? static_cast<long long>(nrow) * p1.ncol : 0);
  // The static schedule's first tile and stride: by block, or by cluster.
  const unsigned first_tile = cl ? ptx::cluster_id_x() : blockIdx.x;
  const unsigned tile_stride = cl ? ptx::cluster_count_x() : gridDim.x;

  // Whether tile t is an up-projection tile, and the projection it belongs to.
  auto is_up = [&](long long t) { return kMode == kModeUp || (kPair && t < total0); };
  auto pass_of = [&](long long t) -> const WsPass& { return kPair && t >= total0 ? p1 : p0; };
  auto ktiles_of = [&](const WsPass& p) { return static_cast<int>((p.g.K + kBK - 1) / kBK); };
  // Tile t of the launch: its rows, expert and column (a whole warp: the lookups are ballots). In
  // a cluster, this block's row tile of unit t; past the last row tile, none of its own (0 rows)
  // but the unit's first expert, whose weight tile it helps load. The unit's weight tile is
  // shared where its first and last row tiles are one expert's (the rows are sorted by expert).
  auto lookup = [&](long long t) -> TileSlot {
    const WsPass& p = pass_of(t);
    TileCoord tc;
    if (!cl) {
      const RowTile rt = tile_at<kBM>(p.g, t < total0 ? t : t - total0, nrow, p.ncol, ctl.group_rows,
                                      ctl.expert_raster, tc);
      return {t, rt.m0, rt.rows, rt.expert, tc.col, tc.row, 0};
    }
    const int group_units = ctl.group_rows > cs ? ctl.group_rows / cs : 1;
    if (eu) {  // unit u's block crank: rows of expert sp.expert, column tile u.col
      const UnitSpan sp = expert_of_unit_warp(p.g, t, kBM * cs, p.ncol);
      const TileCoord u = raster_tile(t - sp.first, sp.units, p.ncol, group_units, ctl.serpentine);
      const RowSpan r = unit_block_rows(p.g.offsets[sp.expert], p.g.offsets[sp.expert + 1], u.row,
                                        static_cast<int>(crank), cs, kBM);
      return {t, r.m0, r.rows, sp.expert, u.col, 0, 1};
    }
    tc = raster_tile(t, nunit, p.ncol, group_units);
    const int r0 = cs * tc.row, rl = min(r0 + cs, nrow) - 1, rm = r0 + static_cast<int>(crank);
    const int e0 = expert_of_tile_warp(p.g, r0, 1);
    const int shared = rl == r0 || expert_of_tile_warp(p.g, rl, 1) == e0 ? 1 : 0;
    const RowTile m = rm <= rl ? find_row_tile_warp<kBM>(p.g, rm) : RowTile{e0, 0, 0};
    return {t, m.m0, m.rows, m.expert, tc.col, rm <= rl ? rm : r0, shared};
  };
  if (wg == 0) {
    // ---------------- producer ----------------
    ptx::setmaxnreg_dec<56>();
    const int pw = tid >> 5;  // producer warp
    // Looks tile `ticket` up (a whole warp: the lookups are ballots), publishes it in slot q of
    // the queue (lane 0) and moves the ticket on: static, by the grid; dynamic, lane 0 claims the
    // tile after this one now, so the atomic's latency hides behind this tile's loads.
    auto publish = [&](long long& ticket, int& q, std::uint32_t& qphase) {
      const long long t = dynamic ? __shfl_sync(0xffffffffu, ticket, 0) : ticket;
      TileSlot cur{t, 0, 0, 0, 0, 0, 0};
      if (t < total) cur = lookup(t);
      if ((tid & 31) == 0) {
        ptx::mbarrier_wait(&q_empty[q], qphase ^ 1);
        write_slot(tile_q[q], cur);
        ptx::mbarrier_arrive(&q_full[q]);  // release: the readers' wait sees the slot
        // A pair claims every tile (none is a block's by its index), so that a claimed up tile
        // always has a running block: a down tile waits only for those.
        if (dynamic && ticket < total)
          ticket = (kPair ? 0 : gridDim.x) + static_cast<long long>(atomicAdd(ctl.counters, 1));
      }
      if (!dynamic) ticket += tile_stride;
      if (++q == 2) q = 0, qphase ^= 1;
      return cur;
    };
    // Every block claims exactly one tile past the end (dynamic); the last block to finish
    // claiming resets the counters for the next launch on the stream.
    auto reset_counters = [&] {
      __threadfence();
      if (atomicAdd(ctl.counters + 1, 1) == static_cast<int>(gridDim.x) - 1) {
        ctl.counters[0] = 0;
        ctl.counters[1] = 0;
      }
    };
    // The weight tile of k step k0 for output columns from brow (the rows of p.map_b: gate rows
    // brow.., up rows brow + N.. in the up-projection), in weight_slices boxes. Not in a cluster,
    // or where the unit's row tiles are not all one expert's: every slice, into this block. Else
    // this block's slice (rank r: slice r) into every block (multicast), the others sending
    // theirs: each block's "full" barrier counts the whole tile either way.
    auto load_b = [&](const WsPass& p, bool up, int k0, int brow, int shared, int s) {
      constexpr int kRowsB = kPP ? kBNpp : kBN;  // the weight tile's rows
      const int slices = weight_slices(up, cs), h = slices == 4 ? kRowsB / 4 : slices == 2 ? kRowsB / 2 : kRowsB;
      auto src_row = [&](int i) {
        const int r = i * h;
        return up && r >= kBN / 2 ? brow + static_cast<int>(p.g.N) + r - kBN / 2 : brow + r;
      };
      if (cl && shared && ctl.mcast) {
        ptx::tma_load_2d_multicast(smem + stage_b(s) + crank * h * (kBK * 2), &p.map_b, k0,
                                   src_row(static_cast<int>(crank)), &full[s],
                                   static_cast<std::uint16_t>((1u << cs) - 1));
      } else {
        for (int i = 0; i < slices; ++i)
          ptx::tma_load_2d(smem + stage_b(s) + i * h * (kBK * 2), &p.map_b, k0, src_row(i), &full[s]);
      }
    };
    // Issues the TMA loads of k tile kt of tile rt, column j0, into stage s (thread 0).
    auto tma_loads = [&](bool up, const WsPass& p, const RowTile& rt, int j0, int kt, int s, int shared) {
      const int k0 = kt * kBK;
      const int e = rt.expert;
      if (up) {
        ptx::mbarrier_arrive_expect_tx(&full[s], ctl.a_tma ? kTileBytesA + kTileBytesB : kTileBytesB);
        if (ctl.a_tma)  // staged rows: sorted position p; a dense pass: x row p - offsets[e]
          ptx::tma_load_2d(smem + stage_a(s), &p.map_a, k0,
                           static_cast<int>(p.g.a_local ? rt.m0 - p.g.offsets[e] : rt.m0), &full[s]);
        load_b(p, true, k0, static_cast<int>(e * 2 * p.g.N) + j0, shared, s);
      } else {  // (ping-pong: kBNpp weight rows)
        ptx::mbarrier_arrive_expect_tx(&full[s], kTileBytesA + (kPP ? kTileBytesBpp : kTileBytesB));
        ptx::tma_load_2d(smem + stage_a(s), &p.map_a, k0, static_cast<int>(rt.m0), &full[s]);
        load_b(p, false, k0, static_cast<int>(e * p.g.N) + j0, shared, s);
      }
    };
    int s = 0;
    std::uint32_t phase = 0;  // parity of the current pass over the stages
    int q = 0;
    std::uint32_t qphase = 0;
    long long ticket = first_tile;  // every block's first tile is its own (not in a pair); the rest static or claimed
    if (!gather) {
      // All loads by TMA. Warp 1 schedules: it looks the tiles up (and, dynamic, claims them) and
      // queues them, up to two ahead, so that lookups and claims (device-memory round trips)
      // never hold up the loads; warp 0's lane 0 takes the tiles from the queue like the
      // consumers and issues the loads; the rest exit. (With the lookups in the loading warp, as
      // until commit 572c00b, the static schedule measured the same, H200 run 81; the dynamic
      // one, which pays a claim per tile, is the default here since: heuristics.hpp.)
      // Issues the loads of tile cur (thread 0); a pair's down tile first waits for its row tile.
      auto load_tile = [&](const TileSlot& cur) {
        const bool up = is_up(cur.t);
        const WsPass& p = pass_of(cur.t);
        if (kPair && !up) {
          // The row tile's activations: every column tile of the up-projection, every consumer
          // warp's rows, written (their releases), then read by TMA (the async proxy).
          while (ptx::ld_acquire_gpu(ctl.row_done + cur.row) < 8 * p0.ncol) __nanosleep(64);
          ptx::fence_proxy_async_global();
        }
        const RowTile rt{cur.expert, cur.m0, cur.rows};
        const int j0 = up ? cur.col * (kBN / 2) : cur.col * (kPP ? kBNpp : kBN);
        const int ktiles = ktiles_of(p);
        for (int kt = 0; kt < ktiles; ++kt) {
          ptx::mbarrier_wait(&empty[s], phase ^ 1);  // a fresh barrier passes parity 1 at once
          tma_loads(up, p, rt, j0, kt, s, cur.shared);
          if (++s == stages) s = 0, phase ^= 1;
        }
      };
      if (pw == 1) {
        if (kPair && tid == 32) ticket = atomicAdd(ctl.counters, 1);
        for (;;)
          if (publish(ticket, q, qphase).t >= total) break;
        if (kPP) publish(ticket, q, qphase);  // the other warpgroup's slot says "none left" too
        if (dynamic && tid == 32) reset_counters();
        return;
      }
      if (tid != 0) return;
      for (;;) {
        ptx::mbarrier_wait(&q_full[q], qphase);
        const TileSlot cur = read_slot(tile_q[q]);
        ptx::mbarrier_arrive(&q_empty[q]);
        if (++q == 2) q = 0, qphase ^= 1;
        if (cur.t >= total) break;
        load_tile(cur);
      }
      return;
    }
    if constexpr (kMode == kModeUp) {
      // Gathered rows: the 128 producer threads copy the x rows with cp.async; thread 0 also
      // issues the weights' TMA loads. The tile: static, every warp looks it up itself (no barrier
      // between them; warp 0 publishes it for the consumers); dynamic, warp 0 looks it up and
      // publishes it, the other warps read the slot back.
      const GemmArgs& g = p0.g;
      const int ktiles = ktiles_of(p0);
      const int lr = tid >> 3, lc = tid & 7;  // rows lr + 16 i, 16-byte chunk lc of each k tile
      // Chunk lc of row r lands at r * 128 + ((lc ^ (r % 8)) << 4) (128-byte swizzle); r % 8 is
      // lr % 8 for every i.
      const std::uint32_t dst0 = sbase + lr * 128 + ((lc ^ (lr & 7)) << 4);
      const int full_k = static_cast<int>(g.K / kBK);  // k tiles wholly inside K
      const std::uint32_t lda16 = static_cast<std::uint32_t>(g.lda / 8);  // A's row stride in 16-byte chunks
      for (;;) {
        TileSlot cur;
        if (pw == 0) {
          cur = publish(ticket, q, qphase);
        } else {
          long long t = ticket;
          cur = {t, 0, 0, 0, 0, 0, 0};
          if (!dynamic) {
            if (t < total) cur = lookup(t);
            ticket += tile_stride;
          }
          if (++q == 2) q = 0, qphase ^= 1;
        }
        if (dynamic) {
          ptx::named_barrier_sync(3, 128);  // the other producer threads read the slot
          // thread 0 rewrites it two tiles on, after the next such barrier
          cur = read_slot(tile_q[q ^ 1]);
        }
        if (cur.t >= total) break;
        const RowTile rt{cur.expert, cur.m0, cur.rows};
        // The thread's 8 source rows, once per tile: their indices in A (32-bit, which keeps the
        // producer within its 56 registers) and a bit per row inside the tile's count (rows past
        // it are not loaded: their outputs are never stored). Per k tile a copy is then one wide
        // multiply-add for its address and the cp.async (the per-copy row, k-range and address
        // arithmetic had the producer issuing ~28 instructions a copy, and the consumers waited
        // on its stages; Nsight Compute, H200 run 83).
        std::uint32_t src[8];
        unsigned live = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int r = lr + 16 * i;
          const std::int64_t p = rt.m0 + r;
          std::int64_t row = 0;
          if (r < rt.rows) {
            live |= 1u << i;
            row = g.gather ? g.gather[p] : p - g.offsets[rt.expert];
          }
          src[i] = static_cast<std::uint32_t>(row);
        }
        // The weight tile's first row (thread 0's loads; one value through the k loop, which keeps
        // the producer within its registers).
        const int brow = static_cast<int>(rt.expert * 2 * g.N) + cur.col * (kBN / 2);
        const int shared = cur.shared;
        for (int kt = 0; kt < ktiles; ++kt) {
          ptx::mbarrier_wait(&empty[s], phase ^ 1);  // a fresh barrier passes parity 1 at once
          if (tid == (ctl.tma_rotate ? 32 * (kt & 3) : 0)) {
            ptx::mbarrier_arrive_expect_tx(&full[s], kTileBytesB);
            load_b(p0, true, kt * kBK, brow, shared, s);
          }
          const std::uint32_t dst = dst0 + stage_a(s);  // row lr + 16 i at + 2048 i (same swizzle)
          const uint4* a16 = reinterpret_cast<const uint4*>(g.A) + (lc + kt * (kBK / 8));  // row 0's chunk
          if (kt < full_k) {
#pragma unroll
            for (int i = 0; i < 8; ++i)
              if ((live >> i) & 1u) ptx::cp_async_cg_16_l2<256>(dst + 2048 * i, a16 + std::uint64_t(src[i]) * lda16);
          } else {
            // The k tail: chunks past K are zero-filled (K is a multiple of 8: whole chunks), their
            // address the row's first chunk (no bytes are read from it; a second base pointer for
            // them cost the producer a register spill).
            const bool kin = kt * kBK + lc * 8 < g.K;
            const uint4* a_row0 = reinterpret_cast<const uint4*>(g.A) + (kin ? lc + kt * (kBK / 8) : 0);
#pragma unroll
            for (int i = 0; i < 8; ++i)
              if ((live >> i) & 1u)
                ptx::cp_async_cg_16(dst + 2048 * i, a_row0 + std::uint64_t(src[i]) * lda16, kin ? 16 : 0);
          }
          ptx::cp_async_commit_group();
          // The hardware arrives for this thread once these copies have landed.
          ptx::cp_async_mbarrier_arrive_noinc(&full[s]);
          if (++s == stages) s = 0, phase ^= 1;
        }
      }
      if (dynamic && tid == 0) reset_counters();
      ptx::cp_async_wait_group<0>();  // nothing in flight when the block exits
    }
  } else {
    // ---------------- consumers ----------------
    ptx::setmaxnreg_inc<224>();  // (ping-pong's 192 accumulators fit too: no spills)
    const int cw = wg - 1;  // rows 64 cw .. 64 cw + 63 of the tile (ping-pong: tiles cw, cw + 2, ...)
    const int w = tid >> 5, l = tid & 31;
    unsigned char* my_out = out_stage + cw * 64 * Shape::kRoundCols * 2;
    int s = 0, prev = 0;
    std::uint32_t phase = 0;
    // Ping-pong: rows 0-63 of the tile in acc[0, kBNpp / 2), rows 64-127 in acc[kBNpp / 2, kBNpp).
    constexpr int kAcc = kPP ? kBNpp : kBN / 2;
    float acc[kAcc];
    int q = kPP ? cw : 0;  // ping-pong: a warpgroup's tiles are all in its own slot
    std::uint32_t qphase = 0;
    // Ping-pong: the stages of the other warpgroup's tile (the tiles have one K) are passed over.
    auto skip_stages = [&](int n) {
      const int to = s + n;
      if ((to / stages) & 1) phase ^= 1;
      s = to % stages;
    };
    if (kPP && cw == 1) skip_stages(ktiles_of(p0));
    // Ping-pong: a warpgroup's k loop starts once the other's has waited for all of its tile's
    // stages (its previous tile: the tiles alternate). A stage's full barrier is then at most one
    // phase ahead of the parity this warpgroup waits for; without the order, warpgroup 1 waiting
    // for its first stage took the completion of warpgroup 0's fill of that stage a wrap earlier
    // (the parity is the same every two phases; an unspecified launch failure at full speed, clean
    // under the sanitizers, H200 run 121). The math of the two then takes turns, and one's
    // epilogue runs during the other's math.
    bool waits_order = kPP && cw == 1;
    std::uint32_t ophase = 0;
    // A pair's up tile: this warp's part of its row tile written, then a release that the down
    // tiles' loads acquire (8 per column tile: every consumer warp's). The warpgroup's TMA stores
    // are its thread 0's, which waits for them first. (Releases per warp instead of a warpgroup
    // barrier and one release: the same time, H200 runs 98 and 100.)
    auto publish_rows = [&](const TileSlot& cur) {
      if constexpr (kPair) {
        __syncwarp();  // the warp's generic stores before its lane 0's release
        if (l == 0) {
          if (w == 0) {
            ptx::bulk_wait_group_all();  // the warpgroup's TMA stores written
            ptx::fence_proxy_async_global();
          }
          __threadfence();
          ptx::red_release_gpu_add(ctl.row_done + cur.row, 1);
        }
      }
    };
    // Epilogue. Accumulator 4 b + 2 h + i of a thread: row 16 w + l / 4 + 8 h, column
    // 8 b + 2 (l % 4) + i; in the up-projection column c < 128 is a gate, c + 128 its up.
    // The warpgroup's 64 output rows are staged 128 columns per round as panels of 64 columns
    // (64 rows x 128 bytes, 16-byte chunk c of row r at chunk c ^ (r % 8): TMA's 128-byte
    // swizzle, and no bank conflicts for these writes).
    auto epilogue = [&](auto up_c, const WsPass& p, const TileSlot& cur) {
      constexpr bool kUp = decltype(up_c)::value;
      using Out = WsShape<kUp>;
      // Ping-pong: per 64-row half of the tile, rounds of up to two panels (kBNpp 192: two, then
      // one), so that a round's staging is the warpgroup's 16 KiB as in the cooperative tile.
      constexpr int kSub = (kBNpp / 64 + 1) / 2;  // ping-pong rounds per half
      constexpr int kRounds = kPP ? 2 * kSub : Out::kRounds;
      const RowTile rt{cur.expert, cur.m0, cur.rows};
      auto round_fn = [&](auto round_c) {
        constexpr int round = decltype(round_c)::value;
        constexpr int kHalf = round / kSub, kPart = round % kSub;
        // The round's 64-column panels and its first accumulator block (8 columns each).
        constexpr int kPanels = kPP ? (kBNpp / 64 - 2 * kPart < 2 ? kBNpp / 64 - 2 * kPart : 2) : Out::kRoundCols / 64;
        constexpr int kB0 = kPP ? kHalf * (kBNpp / 8) + kPart * 16 : round * (Out::kRoundCols / 8);
        // The round's 64 rows and first column: the warpgroup's rows, the round's 128 columns; in
        // ping-pong the round's half of the tile's rows, its part of the kBNpp columns.
        const int row0 = kPP ? kHalf * 64 : cw * 64;
        // A ping-pong half with none of the tile's rows (its wgmma skipped, below) stores nothing:
        // no staging and no barriers (row0 is the same for the whole warpgroup).
        if (row0 >= rt.rows) return;
        // The stores issued from the staged panels (last round or last tile) have read them.
        if (tid == 0) ptx::bulk_wait_group_read_all();
        ptx::named_barrier_sync(1 + cw, 128);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int rr = 16 * w + (l >> 2) + 8 * h;
          unsigned char* row = my_out + rr * 128 + (l & 3) * 4;
#pragma unroll
          for (int bb = 0; bb < kPanels * 8; ++bb) {
            const int b = kB0 + bb;
            float v0 = acc[4 * b + 2 * h], v1 = acc[4 * b + 2 * h + 1];
            if constexpr (kUp) {
              v0 = activate_gated<kAct>(v0, acc[4 * (b + 16) + 2 * h]);
              v1 = activate_gated<kAct>(v1, acc[4 * (b + 16) + 2 * h + 1]);
            }
            *reinterpret_cast<__nv_bfloat162*>(row + (bb >> 3) * Out::kPanelBytes + (((bb & 7) ^ (rr & 7)) << 4)) =
                __floats2bfloat162_rn(v0, v1);
          }
        }
        const int j0 = kPP ? cur.col * kBNpp + kPart * 128 : cur.col * Out::kOutCols + round * Out::kRoundCols;
        if (row0 + 64 <= rt.rows) {  // all 64 rows are this tile's
          // One thread hands the panels to TMA stores, and the warpgroup goes on (to the next
          // round, or its next tile) while they drain; columns past N are clipped.
          ptx::fence_proxy_async_shared();
          ptx::named_barrier_sync(1 + cw, 128);
          if (tid == 0) {
#pragma unroll
            for (int pnl = 0; pnl < kPanels; ++pnl)
              if (j0 + pnl * 64 < p.g.N)
                ptx::tma_store_2d(&p.map_c, j0 + pnl * 64, static_cast<int>(rt.m0 + row0),
                                  my_out + pnl * Out::kPanelBytes);
            ptx::bulk_commit_group();
          }
        } else {
          // Rows past the count belong to the next expert's tile: 16-byte stores with the row
          // and column predicates.
          ptx::named_barrier_sync(1 + cw, 128);
          constexpr int kChunks = kPanels * 8;  // 16-byte chunks per row
#pragma unroll 4
          for (int qq = tid; qq < 64 * kChunks; qq += 128) {
            const int rr = qq / kChunks, c = qq % kChunks;
            const int r = row0 + rr;
            const std::int64_t j = std::int64_t(j0) + c * 8;
            if (r < rt.rows && j < p.g.N) {
              const uint4 v = *reinterpret_cast<const uint4*>(my_out + (c >> 3) * Out::kPanelBytes + rr * 128 +
                                                              (((c & 7) ^ (rr & 7)) << 4));
              *reinterpret_cast<uint4*>(p.g.C + (rt.m0 + r) * p.g.ldc + j) = v;
            }
          }
        }
      };
      for_each_round(std::make_integer_sequence<int, kRounds>{}, round_fn);
    };
    for (;;) {
      ptx::mbarrier_wait(&q_full[q], qphase);
      const TileSlot cur = read_slot(tile_q[q]);
      // Every thread arrives after its own reads of the slot. (With one arrival per warp after
      // __syncwarp, racecheck reported the slot's rewrite racing with the reads of the lanes
      // whose lane 0 had arrived for them, in the pair and ping-pong modes: H200 runs 98-101 and
      // 141; one rule for every mode since run 150.)
      ptx::mbarrier_arrive(&q_empty[q]);
      if (kPP) qphase ^= 1;
      else if (++q == 2) q = 0, qphase ^= 1;
      if (cur.t >= total) break;
      const bool up = is_up(cur.t);
      const WsPass& p = pass_of(cur.t);
      const int ktiles = ktiles_of(p);
      if (!kPP && cw * 64 >= cur.rows) {
        // All 64 of this warpgroup's rows are past the tile's count (an expert's last tile; most
        // tiles at decode sizes): no wgmma and no epilogue, only the stage hand-back, so the
        // tensor-core work of a few-row tile halves.
        for (int kt = 0; kt < ktiles; ++kt) {
          ptx::mbarrier_wait(&full[s], phase);
          release(s);
          if (++s == stages) s = 0, phase ^= 1;
        }
        if (up) publish_rows(cur);
        continue;
      }
#pragma unroll
      for (int i = 0; i < kAcc; ++i) acc[i] = 0.0f;
      if (kPP) {
        if (waits_order) ptx::mbarrier_wait(&order[cw ^ 1], ophase), ophase ^= 1;
        waits_order = true;
      }
      // The k loop, through the last wgmma's completion. Ping-pong: the tile's second 64 rows
      // (kHi) only where some are the tile's, so that an expert's last tile costs its 64-row
      // units, as in the cooperative tile (two copies of the loop: a wgmma under a branch inside
      // it has ptxas serialize every wgmma of the kernel).
      auto k_loop = [&](auto hi_c) {
        [[maybe_unused]] constexpr bool kHi = decltype(hi_c)::value;
        for (int kt = 0; kt < ktiles; ++kt) {
          ptx::mbarrier_wait(&full[s], phase);
          if (gather) ptx::fence_proxy_async_shared();  // the producers' cp.async writes
          ptx::wgmma_fence();
#pragma unroll
          for (int kk = 0; kk < kBK / 16; ++kk) {
            const std::uint64_t db = ptx::smem_desc_sw128(sbase + stage_b(s) + kk * 32);
            if constexpr (kPP) {  // the tile's two 64-row halves against the same weights
              float(&lo)[kBNpp / 2] = *reinterpret_cast<float(*)[kBNpp / 2]>(acc);
              [[maybe_unused]] float(&hi)[kBNpp / 2] = *reinterpret_cast<float(*)[kBNpp / 2]>(acc + kBNpp / 2);
              ptx::wgmma_m64n192k16_bf16(lo, ptx::smem_desc_sw128(sbase + stage_a(s) + kk * 32), db, 1);
              if constexpr (kHi)
                ptx::wgmma_m64n192k16_bf16(hi, ptx::smem_desc_sw128(sbase + stage_a(s) + 64 * 128 + kk * 32), db, 1);
            } else {
              const std::uint64_t da = ptx::smem_desc_sw128(sbase + stage_a(s) + cw * 64 * 128 + kk * 32);
              ptx::wgmma_m64n256k16_bf16(acc, da, db, 1);
            }
          }
          ptx::wgmma_commit_group();
          if (stages > 1) {  // one batch stays in flight; the stage before it is free
            ptx::wgmma_wait_group<1>();
            if (kt > 0) release(prev);
          } else {           // one stage: load, then compute, then load again
            ptx::wgmma_wait_group<0>();
            release(s);
          }
          prev = s;
          if (++s == stages) s = 0, phase ^= 1;
        }
        if (kPP) arrive(&order[cw]);
        ptx::wgmma_wait_group<0>();
      };
      if (!kPP || 64 < cur.rows) k_loop(std::true_type{});
      else if constexpr (kPP) k_loop(std::false_type{});
      if (stages > 1) release(prev);
      if (kPP) skip_stages(ktiles);  // the other warpgroup's next tile
      if constexpr (kMode == kModeUp || kMode == kModePair) {
        if (up) {
          epilogue(std::true_type{}, p, cur);
          publish_rows(cur);
          continue;
        }
      }
      if constexpr (kMode != kModeUp) epilogue(std::false_type{}, p, cur);
    }
    if (tid == 0) ptx::bulk_wait_group_all();  // the block's last stores are done before it exits
    if (kPair) {
      // The last consumer warp done (every tile's loads and stores behind it) zeroes the row
      // counts for the next launch.
      int last = 0;
      if (l == 0) {
        __threadfence();
        last = atomicAdd(ctl.counters + 2, 1) == 8 * static_cast<int>(gridDim.x) - 1;
      }
      if (__shfl_sync(0xffffffffu, last, 0)) {
        __threadfence();
        for (int r = l; r < nrow; r += 32) ctl.row_done[r] = 0;
        if (l == 0) ctl.counters[2] = 0;
      }
    }
  }
  // A cluster's block leaves only once its partner has nothing more to send it (multicast loads,
  // arrivals on its barriers): the threads still running meet the partner's here.
  if (cl) ptx::cluster_sync();
#else
  if (threadIdx.x == 0 && blockIdx.x == 0)
    printf("tilemoe: grouped_ws_kernel needs sm_90a (H100/H200); this GPU runs another arch\n");
  __trap();
#endif
}

bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15) == 0; }

// The tensor maps and column tiles of one projection (a_tma: A's rows read by TMA, a_rows of them).
// csize: the blocks per cluster, which decides the weight tile's boxes (weight_slices).
// pingpong: the down-projection's tiles kBNpp columns wide (one box of that many weight rows).
WsPass make_pass(const GemmArgs& g, bool up, std::int64_t max_tiles, std::int64_t a_rows, bool a_tma,
                 int csize = 1, bool pingpong = false) {
  WsPass p{};
  const std::int64_t rows_b = up ? 2 * g.N : g.N;
  p.map_b = make_tensor_map_bf16(g.B, g.E * rows_b, g.K, g.K, (pingpong ? kBNpp : kBN) / weight_slices(up, csize));
  p.map_a = a_tma ? make_tensor_map_bf16(g.A, a_rows, g.K, g.lda, kBM) : p.map_b;
  // The output's TMA stores take whole 64-row blocks of a tile, all below offsets[E]. Its extent:
  // the down-projection's y has a_rows rows; for the up-projection's act, max_tiles * kBM bounds
  // offsets[E] (no store reaches past the real rows either way).
  p.map_c = make_tensor_map_bf16(g.C, up ? max_tiles * kBM : a_rows, g.N, g.ldc, 64);
  p.g = g;
  const int cols = up ? WsShape<true>::kOutCols : pingpong ? kBNpp : WsShape<false>::kOutCols;
  p.ncol = static_cast<int>((g.N + cols - 1) / cols);
  return p;
}

// tiles: the launch's tiles (a cluster launch's: units of row tiles x column tiles).
template <int kMode, Activation kAct>
void run(const WsPass& p0, const WsPass& p1, std::int64_t tiles, const WsCtl& ctl) {
  constexpr int smem = WsShape<true>::kSmem;
  auto kernel = grouped_ws_kernel<kMode, kAct>;
  TILEMOE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const int cs = ctl.csize;
  if (cs <= 1) {
    const int grid = static_cast<int>(std::min<std::int64_t>(device_props().sm_count, tiles));
    kernel<<<grid, kThreads, smem, current_stream()>>>(p0, p1, ctl);
    TILEMOE_CHECK_LAUNCH();
    return;
  }
  // Clusters of cs blocks, as many as fit at once (the GPCs' SM counts decide), each walking
  // tiles cluster, cluster + clusters, ...
  cudaLaunchConfig_t cfg{};
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(cs);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.gridDim = dim3(static_cast<unsigned>(device_props().sm_count / cs * cs), 1, 1);
  cfg.blockDim = dim3(kThreads, 1, 1);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = current_stream();
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  // The resident clusters of this kernel per (device, size), asked once (the query costs ~0.1 ms
  // of host time per call).
  static std::mutex mu;
  static std::map<std::pair<int, int>, int> fits;
  int fit = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    int& f = fits[{device_props().device, cs}];
    if (f == 0) TILEMOE_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&f, kernel, &cfg));
    fit = f;
  }
  // Where no cluster of cs fits at once (an SM partition without cs free SMs in one GPC), the
  // same tiles run without clusters if the weight tile's boxes are the same (the up-projection's
  // halves); TILEMOE_WS_CLUSTER_NOFIT=1 takes this path on any card (tests).
  if (env_is("TILEMOE_WS_CLUSTER_NOFIT", "1")) fit = 0;
  constexpr bool kUp = kMode == kModeUp;
  if (fit < 1 && weight_slices(kUp, cs) == weight_slices(kUp, 1)) {
    WsCtl alone = ctl;
    alone.csize = 1;
    run<kMode, kAct>(p0, p1, tiles * cs, alone);
    return;
  }
  check_arg(fit >= 1, "resident clusters of the fused kernels", fit, ">= 1");
  cfg.gridDim.x = static_cast<unsigned>(cs * std::min<std::int64_t>(fit, tiles));
  static bool told = false;
  if (!told && std::getenv("TILEMOE_WS_CLUSTER_TELL")) {
    std::fprintf(stderr, "tilemoe: clusters of %d resident at once: %d (grid %u)\n", cs, fit, cfg.gridDim.x);
    told = true;
  }
  TILEMOE_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, p0, p1, ctl));
}

template <int kMode>
void run_act(Activation act, const WsPass& p0, const WsPass& p1, std::int64_t tiles, const WsCtl& ctl) {
  if constexpr (kMode == kModeDown || kMode == kModeDownPP) run<kMode, Activation::relu>(p0, p1, tiles, ctl);  // none
  else if (act == Activation::swiglu) run<kMode, Activation::swiglu>(p0, p1, tiles, ctl);
  else if (act == Activation::geglu) run<kMode, Activation::geglu>(p0, p1, tiles, ctl);
  else run<kMode, Activation::clamped_swiglu>(p0, p1, tiles, ctl);
}

}  // namespace

std::string ws_refusal(const GemmArgs& g, bool up, std::int64_t a_rows) {
  const DeviceProps& dp = device_props();
  if (dp.cc_major != 9 || dp.cc_minor != 0)
    return "needs an sm_90 GPU (H100/H200), this one is sm_" + std::to_string(dp.cc_major * 10 + dp.cc_minor);
  if (dp.smem_optin < static_cast<std::size_t>(std::max(WsShape<false>::kSmem, WsShape<true>::kSmem)))
    return "needs " + std::to_string(WsShape<true>::kSmem) + " bytes of shared memory per block";
  if (up && !(g.gated && gated_fixed(g.act)))
    return std::string("the up-projection needs a gated activation, not ") + to_string(g.act);
  if (g.K % 8 != 0) return (up ? "d_model = " : "d_expert = ") + std::to_string(g.K) + " is not a multiple of 8";
  if (g.N % 8 != 0) return (up ? "d_expert = " : "d_model = ") + std::to_string(g.N) + " is not a multiple of 8";
  if (g.lda % 8 != 0 || g.ldc % 8 != 0 || !aligned16(g.A) || !aligned16(g.B) || !aligned16(g.C))
    return "operands not 16-byte aligned";
  // TMA coordinates are 32-bit: the weight rows of all experts and the rows of A must fit.
  if (g.E * (up ? 2 : 1) * g.N >= (std::int64_t(1) << 31) || a_rows >= (std::int64_t(1) << 31))
    return "more than 2^31 rows in one operand";
  return {};
}

void launch_grouped_ws(const GemmArgs& g, bool up, std::int64_t max_tiles, std::int64_t a_rows, int stages) {
  if (max_tiles <= 0 || g.N <= 0) return;
  const bool a_tma = !up || !g.gather;  // rows of A contiguous: a TMA box per k tile
  const bool pp = !up && ws_pingpong();
  const int cs = pp ? 1 : ws_cluster_size(max_tiles, g.E, up, a_tma);
  const WsPass p = make_pass(g, up, max_tiles, a_rows, a_tma, cs, pp);
  const bool mcast = !env_is("TILEMOE_WS_CLUSTER_MCAST", "0");
  WsCtl ctl{kRasterRows, std::clamp(stages <= 0 ? ws_stages() : stages, 1, WsShape<true>::kStages), nullptr, nullptr,
            a_tma, expert_raster(), cs, mcast, mcast || !env_is("TILEMOE_WS_CLUSTER_LOCK", "0"),
            !env_is("TILEMOE_WS_CLUSTER_UNITS", "fixed"), !env_is("TILEMOE_WS_SERPENTINE", "0"),
            ws_tma_rotate()};
  if (cs == 1 && ws_dynamic_tiles(max_tiles, g.E, a_tma)) ctl.counters = tile_counters();
  // (Units from each expert's first row: at most E (cs - 1) / cs more than of consecutive tiles.)
  const std::int64_t tiles = (max_tiles + std::int64_t(g.E) * (cs - 1) + cs - 1) / cs * p.ncol;
  if (up) run_act<kModeUp>(g.act, p, p, tiles, ctl);
  else if (pp) run_act<kModeDownPP>(g.act, p, p, tiles, ctl);
  else run_act<kModeDown>(g.act, p, p, tiles, ctl);
}

void launch_grouped_ws_pair(const GemmArgs& up, const GemmArgs& down, std::int64_t max_tiles, std::int64_t a_rows_up,
                            std::int64_t a_rows_down, int stages) {
  if (max_tiles <= 0 || up.N <= 0) return;
  const WsPass p0 = make_pass(up, true, max_tiles, a_rows_up, true);
  const WsPass p1 = make_pass(down, false, max_tiles, a_rows_down, true);
  int* counters = tile_counters(max_tiles);
  const WsCtl ctl{kRasterRows, std::clamp(stages <= 0 ? ws_stages() : stages, 1, WsShape<true>::kStages), counters,
                  counters + kTileCounterHead, true, expert_raster(), 1, false, false, false, false, false};
  run_act<kModePair>(up.act, p0, p1, max_tiles * (p0.ncol + p1.ncol), ctl);
}

}  // namespace tilemoe::detail::gpu
