// Tile shapes of the grouped GEMM kernels, chosen on the host, apart from the kernels.
// One shape for now (mma.sync bf16, 8 warps of 64 x 32): 128 x 128 x 64, 3 cp.async stages
// (96 KiB of shared memory, two blocks per SM). The gated up-projection's 128 columns are
// 64 gate + 64 up columns of the same outputs. Measured on an H100 (docs/gpu_runs.md): 128 x 128 x 32
// with 4 stages ~250 TFLOP/s on large layers; 128 x 256 x 32 at one block per SM was slower.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace tilemoe::detail::gpu {

// The A/B switches below read the environment at every launch, so that a test can flip them:
// env_is(name, value) when name is set to exactly value; env_int(name, lo, hi) its integer value
// in [lo, hi], else 0.
inline bool env_is(const char* name, const char* value) {
  const char* env = std::getenv(name);
  return env && std::strcmp(env, value) == 0;
}
inline int env_int(const char* name, int lo, int hi) {
  const char* env = std::getenv(name);
  const int v = env ? std::atoi(env) : 0;
  return v >= lo && v <= hi ? v : 0;
}

struct GroupedTiles {
  static constexpr int kM = 128, kN = 128, kK = 64, kStages = 3, kThreads = 256, kMinBlocks = 2;
  static constexpr int smem_bytes() { return kStages * (kM + kN) * kK * 2; }
};

// Which kernel a grouped projection takes on Hopper (sm90/grouped_wgmma.cu: wgmma, 128 x 256 x 64,
// one block per SM) where both apply. Measured on an H100 at T 24576 (docs/gpu_runs.md, runs 7, 11):
// - gated up-projection (an epilogue instantiation per activation): wgmma 503-578 TFLOP/s
//   against mma.sync's 321-354 on sonic-7b, qwen3-30b-a3b, olmoe-1b-7b; 343 vs 318 on
//   mixtral-8x7b (595 once tiles were rasterized). Plain activations (GELU, ReLU) keep a
//   generic epilogue whose code size stalled instruction fetch (ncu), so they stay on mma.sync.
// - down-projection: wgmma wins once K (= n) is long enough (K 768: 435 vs 297 TFLOP/s; K 14336:
//   604 vs 356) and not at K 256 (201 vs 211).
// grouped_kernel_override() (below) can force either (tests, A/B timing).
inline bool prefer_wgmma(bool up, bool gated_fixed, std::int64_t K) { return up ? gated_fixed : K >= 512; }

// Whether the wgmma kernel's fixed gated up-projection loads its weights by TMA (one thread, two
// boxes per stage) while the threads gather the x rows, instead of every thread copying both with
// cp.async; its down-projection too (one box per stage). TILEMOE_WGMMA_TMA_B=0 turns it off
// (A/B timing, tests).
// Measured (H200 runs 153-154, commit ad2f392, the `grouped` layer, two rounds in reversed
// orders, ms, weights by cp.async / by TMA): gpt-oss-120b T 8192 4.255, 4.200 / 3.974, 3.287;
// Mixtral-8x7B T 4096 5.748, 5.765 / 5.101, 4.889; d 4096 n 1024 T 32768 14.989, 14.820 / 13.420,
// 13.416; Qwen3-30B-A3B T 16384 2.934, 3.097 / 2.482, 2.669; sonic-7b T 24576 1.563, 1.565 /
// 1.546, 1.530 (the up-projection alone: Mixtral 3.795 -> 3.470, 3.342).
inline bool wgmma_tma_weights() { return !env_is("TILEMOE_WGMMA_TMA_B", "0"); }
// Whether its down-projection, weights by TMA, also loads its rows of A by TMA (one box per stage
// from the same thread, where the rows are contiguous: no thread copies anything). Measured (the
// same runs, the down-projection kernel alone, ms, rows by cp.async / by TMA): gpt-oss-120b 1.300,
// 1.330 / 1.275, 1.273; Mixtral 1.664, 1.696 / 1.576, 1.573; d 4096 n 1024 5.348, 5.324 / 5.286,
// 5.094; Qwen3 1.163, 1.161 / 1.148, 1.147; sonic-7b (n 256: mma.sync, not this kernel) 0.757,
// 0.783 / 0.761, 0.781. On; TILEMOE_WGMMA_TMA_A=0 copies them (A/B timing, tests).
inline bool wgmma_tma_rows() { return !env_is("TILEMOE_WGMMA_TMA_A", "0"); }

// TILEMOE_GROUPED_KERNEL in the environment overrides the kernel choices of this file (tests,
// A/B timing), read at every launch so that a test can switch it: `mma` keeps the grouped path
// on mma.sync, `wgmma` takes the sm90 wgmma kernel wherever it applies (the fused path's
// up-projection included), `ws` puts the fused path's up-projection on the warp-specialized kernel.
enum class KernelOverride { none, mma, wgmma, ws };
inline KernelOverride grouped_kernel_override() {
  if (env_is("TILEMOE_GROUPED_KERNEL", "mma")) return KernelOverride::mma;
  if (env_is("TILEMOE_GROUPED_KERNEL", "wgmma")) return KernelOverride::wgmma;
  if (env_is("TILEMOE_GROUPED_KERNEL", "ws")) return KernelOverride::ws;
  return KernelOverride::none;
}

// Row tiles per raster group of the grouped launches (grouped_gemm.cuh raster_tile): a wave of
// ~132 blocks then covers ~16 row panels x ~8 weight panels, whose k slices the blocks read at
// about the same time from L2. Row-tile-major order instead streamed all of an expert's weight
// columns once per row tile (Mixtral's up-projection: ~70 GB of weight reads at T 24576).
constexpr int kRasterRows = 16;
// Whether the sm90 kernels raster their tiles within each expert (grouped_gemm.cuh
// expert_raster_tile) rather than in groups of fixed rows across experts. TILEMOE_RASTER=fixed
// keeps the fixed groups (A/B timing, tests).
// (Groups of 8 and 32 row tiles measured no different from 16: H200 run 63.)
inline bool expert_raster() { return !env_is("TILEMOE_RASTER", "fixed"); }

// Pipeline stages of the fused kernels (sm90/grouped_ws.cu): as many as shared memory holds
// next to the staged output (48 KiB each, 4). The down-projection had 3 while it staged all 256
// output columns at once; the fourth took sonic-7b's down-projection from 0.349 to 0.316 ms and
// left the larger layers within 2% (H100, session 4, docs/hopper_log.md).
// TILEMOE_WS_STAGES (1..4) in the environment overrides it (A/B timing of the pipeline depth).
inline int ws_stages() {
  const int v = env_int("TILEMOE_WS_STAGES", 1, 4);
  return v ? v : 4;
}

// Decode sizes for the fused kernels: about one row tile per expert or less (max_tiles bounds the
// row tiles of E experts), where every tile streams ~1 MB of weights for a few rows. The
// schedule, the row staging, the pair launch and the clusters below all switch on it.
inline bool decode_sized(std::int64_t max_tiles, int E) { return max_tiles <= 2 * std::int64_t(E); }

// How the warp-specialized kernels hand out their output tiles: statically (block b takes tiles
// b, b + grid, ...) or dynamically (after its first tile, a block's scheduler claims the next from
// a device counter and queues it for the loads and the consumers, grouped_ws.cu). Dynamic where
// every load is by TMA (down-projections, staged rows, dense passes): a warp of its own claims
// and looks the tiles up, off the loading thread, and blocks that drew tiles of few rows take
// more. H200 run 84 (commit 69baf3f, two A/B rounds, stage ms, dynamic vs static):
// down-projection OLMoE-1B-7B T 16384 0.781 / 0.778 vs 0.844 / 0.829, gpt-oss-120b 1.131 / 1.118
// vs 1.316 / 1.237, staged up-projection OLMoE 1.853 / 1.849 vs 2.034 / 2.013, gpt-oss 2.406 /
// 2.357 vs 2.595 / 2.444; sonic-7b, Qwen3-30B-A3B, d 4096 and Mixtral within their spread. Where
// the producer gathers x rows itself (its lookups between its copies), static, except at about
// one row tile per expert or less (max_tiles <= 2 E, decode sizes, where every tile streams ~1 MB
// of weights and a static share left SMs idle at the end: H100 run 49), and the dynamic gather
// was no faster in run 84 (Qwen3-30B-A3B up-projection 1.467 / 1.502 vs 1.425 / 1.422 static).
// TILEMOE_WS_SCHED=static|dynamic overrides it (tests, A/B timing).
inline bool ws_dynamic_tiles(std::int64_t max_tiles, int E, bool all_tma) {
  if (env_is("TILEMOE_WS_SCHED", "static")) return false;
  if (env_is("TILEMOE_WS_SCHED", "dynamic")) return true;
  return all_tma || decode_sized(max_tiles, E);
}

// The fused path's gated up-projection over gathered rows runs on the warp-specialized kernel
// (its 128 producer threads gather x with cp.async, the weights come by TMA, the epilogue of one
// tile overlaps the next tile's loads). Until commit 69baf3f the all-thread wgmma kernel
// (grouped_wgmma.cu) stayed ahead on large layers (H100 run 39: Qwen3-30B-A3B T 16384 1.570 vs
// 1.756 ms): Nsight Compute then showed the producer issuing ~28 instructions per 16-byte copy
// and the consumers waiting on its stages (H200 run 83); with the copies down to an address
// multiply-add each, H200 run 84, up-projection ms, two rounds, ws vs wgmma: sonic-7b 0.537 /
// 0.540 vs 0.572 / 0.571, Qwen3-30B-A3B 1.425 / 1.422 vs 1.558 / 1.522, d 4096 n 512 3.656 /
// 3.550 vs 3.635 / 3.705. The wgmma kernel remains the `grouped` algorithm's, and the fused
// path's where d is longer than 4096 (below).
// grouped_kernel_override() ws|wgmma forces either. The down-projection, all TMA, is faster
// warp-specialized everywhere (sonic-7b 383 vs 214 TFLOP/s, Mixtral 682 vs 598).
//
// Where the fused up-projection gathers its rows of x (up_stages_x false) and d is longer than
// 4096 (DeepSeek-V3, d 7168: 14 KiB rows, a 112-step K loop per tile), the all-thread wgmma
// kernel, whose 256 threads all gather, runs it faster than the warp-specialized kernel's 128
// producer threads, with or without clusters, and faster than staging the rows. H100 run 159
// (commit 8967711, the fused layer's up-projection ms; ws with clusters of two / ws without /
// staged rows / wgmma): DeepSeek-V3 T 24576 26.875 / 40.077 / 21.832 / 19.362, whole layer 41.707
// (0.99x sequential, run 157) against 34.276; T 8192 9.422 / 14.038 / 12.298 / 7.540, layer
// 15.227 against 13.320. At d 4096 and below the warp-specialized kernel was ahead or tied (run
// 84 above). grouped_kernel_override() ws keeps the warp-specialized kernel.
inline bool fused_up_gathers_on_wgmma(std::int64_t d) { return d > 4096; }

// Whether the fused up-projection copies the routed rows of x once, in sorted order, into room
// it is given (the down-projection's output y, not yet written; gather_rows.cu) and then loads
// them by TMA like its weights, instead of its producer gathering them with cp.async. The copy
// moves 4 d bytes per routed row (read + write) against the GEMM's 4 d n flops, so it pays where
// n is large; at decode sizes (about one row tile per expert or less) the copy is a few MB and
// the kernel streams weights sooner without the gather. H200 run 85 (commit d938b9b, the lean
// gathering producer; up-projection stage ms, two rounds, in-kernel gather vs staged, the copy
// included): staged wins on gpt-oss-120b (n 2880: 2.511 / 2.553 vs 2.251 / 2.254), Mixtral
// (n 14336: 3.257 / 3.510 vs 3.082 / 3.210), Qwen3-30B-A3B T 256 (0.262 vs 0.216) and OLMoE T 64
// (0.175 / 0.177 vs 0.152); the gather wins on OLMoE T 16384 (n 1024: 1.716 / 1.718 vs 1.911 /
// 1.855; staged until then, run 61), sonic-7b (0.537 vs 0.794), Qwen3 T 16384 (1.370 / 1.374 vs
// 1.522 / 1.518) and d 4096 n 1024 (7.460 / 7.379 vs 7.734 / 7.742).
// TILEMOE_UP_GATHER=kernel|staged overrides it (tests, A/B timing).
inline bool up_stages_x(std::int64_t d, std::int64_t n, std::int64_t max_tiles, int E) {
  if (env_is("TILEMOE_UP_GATHER", "kernel")) return false;
  if (env_is("TILEMOE_UP_GATHER", "staged")) return true;
  return decode_sized(max_tiles, E) || (n >= 2048 && d <= 2 * n);
}

// How many blocks of the fused path's warp-specialized kernels form a cluster (sm90/grouped_ws.cu;
// 1: none). The blocks of a cluster take consecutive row tiles of one expert and one column tile
// (units from each expert's first row; 2-6% faster on the d 4096 layers than units of any
// consecutive row tiles, TILEMOE_WS_CLUSTER_UNITS=fixed, H200 run 121), and each loads a slice of
// the weight tile into every block (TMA multicast):
// with two, a third less traffic from L2 per block (the weight tile is 32 of a stage's 48 KiB),
// with four, half. Static schedule over the units of row tiles; the consumer warps release each
// stage to every block's producer. Where it pays: the up-projection whose producer gathers its
// rows of x (Nsight Compute had its consumers waiting on their loads, H200 run 112, d 4096 /
// n 1024). Up-projection stage ms, two rounds, none / two: H200 run 116 d 4096 / n 1024 7.40,
// 7.36 / 7.00, 6.85; sonic-7b 0.541, 0.542 / 0.528, 0.528. Run 117 (another card, hotter):
// d 4096 / n 1024 8.82, 8.92 / 8.35, 8.23; sonic-7b 0.627, 0.628 / 0.614, 0.613; Qwen3-30B-A3B
// 1.754, 1.580 / 1.539, 1.538; d 4096 / n 512 4.530, 4.243 / 4.121, 4.333; OLMoE 2.147, 2.007 /
// 2.216, 2.076 (the one gathering layer a little slower). Not taken: clusters of four (only 30
// resident, 120 of 132 SMs: slower everywhere, e.g. d 4096 / n 1024 up 9.59), clusters for the
// up-projections whose rows come by TMA (staged: gpt-oss-120b 2.34 / 2.60, Mixtral 3.21 / 3.20)
// and for the down-projections (all TMA, dynamic schedule without clusters: sonic-7b 0.293 /
// 0.313, d 4096 / n 1024 3.23 / 3.44). (Runs 113-115 had clusters far slower: the remote
// arrivals released at cluster scope, which cost 37%, run 115.) Only above decode sizes. Where no
// cluster fits at once on the card, the up-projection runs without (sm90/grouped_ws.cu run).
// Since the rotating TMA warp and the 256-byte L2 hint (ws_tma_rotate), H200 run 130 (commit
// 3f14e80), whole layer ms, three rounds, two / none: d 4096 / n 512 6.394, 6.162, 6.417 / 6.261,
// 6.221, 6.259; Qwen3-30B-A3B 2.336, 2.351, 2.370 / 2.293, 2.280, 2.304; OLMoE 2.816, 2.791, 2.837
// / 2.772, 2.744, 2.710: none ahead by ~2%. d 4096 / n 1024, where two gained most (runs
// 116-117), is not re-measured: two stays until it is.
// TILEMOE_WS_CLUSTER_UP / TILEMOE_WS_CLUSTER_DOWN = 1, 2 or 4 force a size;
// TILEMOE_WS_CLUSTER_MCAST=0 loads every weight tile in each block (A/B), and with it
// TILEMOE_WS_CLUSTER_LOCK=0 releases stages to the own block only.
inline int ws_cluster_size(std::int64_t max_tiles, int E, bool up, bool a_tma) {
  if (decode_sized(max_tiles, E)) return 1;
  const int forced = env_int(up ? "TILEMOE_WS_CLUSTER_UP" : "TILEMOE_WS_CLUSTER_DOWN", 1, 4);
  if (forced == 1 || forced == 2 || forced == 4) return forced;
  return up && !a_tma ? 2 : 1;
}

// Whether the fused path's down-projection (outside the decode pair launch) runs in ping-pong
// (sm90/grouped_ws.cu kModeDownPP): each consumer warpgroup takes every other tile, 128 x 192 of
// its own (128 x 128 until the measurements below), so that one's epilogue overlaps the other's
// math, against the cooperative 128 x 256 tile
// that both warpgroups compute and then both store. Where the K loop is short (n = K below 1024:
// d 4096 / n 512, Qwen3-30B-A3B, sonic-7b) the cooperative tile spends ~1.4-1.8 us per tile
// beyond its tensor work (H200 run 118); SonicMoE runs these down-projections in ping-pong
// (128 x 192 with 2 x 1 clusters). Measured slower (H200 run 122, down-projection ms, two rounds,
// cooperative / ping-pong): sonic-7b 0.283, 0.284 / 0.312, 0.312; d 4096 / n 512 1.829, 1.920 /
// 1.910, 1.912; Qwen3-30B-A3B 0.644, 0.676 / 0.684, 0.693 (its 128 x 128 tiles read 32 KiB from L2
// per 2.1 MFLOP against 48 per 4.2). With 128 x 192 tiles (commit 6468ddc; 40 KiB per 3.1 MFLOP),
// H200 runs 138-139 (down-projection ms, cooperative / ping-pong): d 4096 / n 512 1.930, 1.870,
// 1.852 / 1.690, 1.720, 1.765; Qwen3-30B-A3B 0.628, 0.647, 0.635 / 0.616, 0.620, 0.616; sonic-7b
// 0.283 / 0.283; run 142 (commit 4044405, default / =0): d 4096 / n 512 1.702, 1.718 / 1.932,
// 1.837; Qwen3-30B-A3B 0.635, 0.630 / 0.651, 0.654; sonic-7b 0.286 / 0.284, 0.286. At K 1024 and
// above too (H200 runs 145-146, commit fde57e7, cooperative / ping-pong, four rounds): gpt-oss-120b
// (K 2880, d 2880 = 15 x 192 columns against 11.25 x 256) 1.106, 1.122, 1.113, 1.127 / 1.021,
// 1.033, 1.045, 1.001; d 4096 / n 1024 3.417, 3.412, 3.439, 3.428 / 3.256, 3.257, 3.288, 3.230;
// Mixtral (K 14336, two rounds) 1.528, 1.528 / 1.517, 1.526. On at every K (decode sizes run
// the pair mode, whose down tiles are cooperative); TILEMOE_WS_PINGPONG=0 keeps the cooperative
// tile (A/B timing, tests).
inline bool ws_pingpong() { return !env_is("TILEMOE_WS_PINGPONG", "0"); }

// Whether the gathering up-projection's producer (sm90/grouped_ws.cu) issues its weight loads from
// thread 0 of warp k mod 4 at k step k instead of always from thread 0, which also issues its own
// row copies (QuACK rotates the warp that issues TMA). Measured with the 256-byte L2 prefetch
// hint on the row copies (H200 run 125, commit 250e5c3, whole layer ms, neither / rotate / hint
// / H200 run 126, commit 27faa4b, neither / both, two rounds each): sonic-7b 1.169, 1.172 /
// 1.155 / 1.165 // 1.165, 1.171 / 1.171, 1.144; d 4096 / n 512 6.444, 6.488 / 6.315 / 5.960 //
// 6.494, 6.427 / 5.915, 5.833; n 1024 12.082, 11.987 / 11.846 / 11.831 // 12.065, 12.160 /
// 11.920, 11.942; Qwen3-30B-A3B 2.371, 2.437 / 2.334 / 2.359 // 2.365, 2.366 / 2.342, 2.316;
// OLMoE 2.808, 2.902 / 2.766 / 2.809 // 2.870, 2.821 / 2.809, 2.739. On; TILEMOE_WS_TMA_ROTATE=0
// for A/B timing.
inline bool ws_tma_rotate() { return !env_is("TILEMOE_WS_TMA_ROTATE", "0"); }

// Whether the fused path runs both projections in one launch (sm90/grouped_ws.cu, pair mode: every
// up-projection tile, then every down-projection tile, each waiting for its row tile's
// activations) instead of two. At decode sizes (about one row tile per expert or less, as
// up_stages_x) each up-projection tile streams ~1 MB of weights, so SMs out of tiles idled for
// most of a tile's time at the up-projection's end (Nsight Compute, H200 run 97: Qwen3-30B-A3B
// T 64, up-projection 74.5% of peak DRAM throughput over its duration against the
// down-projection's 80.2%), and the down-projection's first wave started on an idle memory
// system. One launch: Qwen3-30B-A3B T 64 graph-replayed layer 0.336-0.338 -> 0.315-0.317 ms,
// OLMoE T 256 0.258-0.261 -> 0.246-0.248 (H200 runs 98, 100; sm90/grouped_ws.cu). Larger
// layers keep two launches (one is not measured there; their tails are a smaller share).
// TILEMOE_WS_PAIR=0 turns it off (A/B timing, tests).
inline bool ws_pair(std::int64_t max_tiles, int E) {
  return !env_is("TILEMOE_WS_PAIR", "0") && decode_sized(max_tiles, E);
}

// Tokens up to which bf16 router logits come from one CUDA-core kernel (a block per 8 tokens and
// 8 experts, fp32 dot products) instead of a weight split and a tensor-core GEMM: at decode sizes
// the GEMM path is launch-bound (H100 run 21: 62 us for Qwen3-30B-A3B at T 64, most of it
// launches of the split and cuBLAS kernels). With bf16 router weights, where the GEMM path is one
// cuBLAS launch, that launch was no faster at decode sizes either (H100 run 161, commit 1c2de9a,
// the fused layer ms, kernel / cuBLAS: Qwen3-30B-A3B T 64 0.433, 0.434 / 0.436; T 256 0.469,
// 0.470 / 0.464; OLMoE T 64 0.312 / 0.315; T 256 0.333 / 0.331).
constexpr std::int64_t router_small_tokens() { return 512; }

// Routing metadata in one block (metadata.cu's one-kernel stable counting sort) up to this many
// assignments and experts; above, the general path (the same sort over chunks of the
// assignments in three launches; until bc709d1 a histogram, scans, CUB's radix sort and an
// inverse map, ~7 launches, ~24 us on an H100 at A = 512, docs/gpu_runs.md run 21). The counters,
// 32 warps x (E + 1) int32 in shared memory (131 KB at E = 1024), bound E.
constexpr std::int64_t metadata_one_block_max_assignments() { return 16384; }
constexpr int metadata_one_block_max_experts() { return 1024; }
// Its block: 256 threads up to 2048 assignments (decode sizes: a quarter of the per-expert passes
// over the warps' counters, narrower scans and barriers), else 1024. TILEMOE_META_SMALL256=0
// keeps 1024 (A/B timing).
inline int metadata_one_block_threads(std::int64_t A) {
  return A <= 2048 && !env_is("TILEMOE_META_SMALL256", "0") ? 256 : 1024;
}

// Whether the combine runs a block per token (its threads over the token's 8-column chunks, d / 8
// of them up to 512) instead of a thread per (token, chunk) item grid-stride (a 64-bit division
// per item, the token's assignment range looked up by each thread). Measured (H200 run 126,
// commit 27faa4b, combine stage ms, two rounds, items / block per token): d 4096 (T 32768)
// 0.610, 0.609, 0.608 / 0.564, 0.564; Qwen3-30B-A3B and OLMoE (d 2048) 0.158 / 0.148, 0.147;
// Mixtral (d 4096, T 4096) 0.038 / 0.029; slower on sonic-7b (d 1536) 0.178 / 0.187 and
// gpt-oss-120b (d 2880, 360 threads) 0.067 / 0.069. So from d 2048 on where d / 8 is whole warps.
// Below a card's worth of resident blocks (resident_blocks: SMs x 2048 / threads) the block per
// token leaves SMs short of threads: at decode sizes the item kernel was faster (H200 run 129,
// commit 747596a, combine stage ms, block per token / items: Qwen3 and OLMoE T 64 0.008 /
// 0.006, T 256 0.008 / 0.007-0.008). TILEMOE_COMBINE=token|items forces one (A/B timing, tests).
inline bool combine_block_per_token(std::int64_t T, std::int64_t d, std::int64_t resident_blocks) {
  if (env_is("TILEMOE_COMBINE", "token")) return true;
  if (env_is("TILEMOE_COMBINE", "items")) return false;
  return d >= 2048 && d % 256 == 0 && T >= resident_blocks;
}

// Row stride (elements) of the bf16 activation between the two GEMMs: a multiple of 8 so that
// its rows stay 16-byte aligned for cp.async.
inline std::int64_t act_row_stride(std::int64_t n) { return (n + 7) / 8 * 8; }

}  // namespace tilemoe::detail::gpu
