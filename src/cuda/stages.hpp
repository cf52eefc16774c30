// The GPU stages of the forward, as plain C++ declarations over device pointers (no CUDA
// header), so that forward.cu composes them and the GPU tests can check each against the CPU.
// Every function enqueues on the library's stream (cudaStreamPerThread) and returns at once,
// unless it says it synchronizes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tilemoe/config.hpp"
#include "tilemoe/rounding.hpp"

namespace tilemoe::detail::gpu {

// ---- router (router.cu) ----
// Logits with fp32 accuracy of x [T, d] . w [E, d]^T (w fp32, or bf16 where w_bf16), written as
// `parts` fp32 partial logits per token: logits [T, parts * E], token t's logit for expert e being
// l[e] for parts 1 and (l[e] + l[E + e]) + l[2E + e] for parts 3, l = logits + t * parts * E. x is
// fp32 (one fp32 GEMM, parts 1; a bf16 w widened in scratch first) or bf16: up to
// router_small_tokens() tokens one CUDA-core kernel (parts 1), above that one bf16 GEMM (parts 1)
// against a bf16 w, or against an fp32 w split into three bf16 parts in scratch (parts 3).
// router_logits returns the parts it wrote, router_logit_parts tells it beforehand.
int router_logit_parts(std::int64_t T, bool x_bf16, bool w_bf16 = false);
std::size_t router_scratch_bytes(std::int64_t T, std::int64_t d, int E, bool x_bf16, bool w_bf16 = false);
int router_logits(const void* x, bool x_bf16, const void* w, bool w_bf16, std::int64_t T, std::int64_t d, int E,
                  float* logits, void* scratch);
// The fused scores + top-k + weights of every RouterKind, the CPU's tie rule (lower index wins):
// ids [T, K] int32 and weights [T, K] fp32 from logits [T, parts * E]; bias [E] may be null.
// probs, where given: [T, E], what router_probs writes, bit for bit, in the same pass.
void router_topk(const RouterConfig& rc, const float* logits, const float* bias, std::int64_t T,
                 std::int32_t* ids, float* weights, int parts = 1, float* probs = nullptr);
// probs [T, E]: softmax of each row, or the sigmoid for sigmoid_group_topk (as
// router_probabilities() on the CPU).
void router_probs(const RouterConfig& rc, const float* logits, std::int64_t T, float* probs, int parts = 1);

// The caller's routing (ForwardOptions::topk_ids / topk_weights: ids_in and w_in [T, K] on the
// device) copied into ids and weights, an id outside [0, E) as expert 0 with weight 0, so that
// nothing after it reads past the experts and that assignment adds nothing. bad (one int on the
// device, set to kNoBadToken first): the lowest token whose ids are out of range or repeated or
// whose weights are not finite.
constexpr int kNoBadToken = 0x7f7f7f7f;
void take_routing(const std::int32_t* ids_in, const float* w_in, std::int64_t T, int K, int E, std::int32_t* ids,
                  float* weights, int* bad);

// ---- metadata (metadata.cu) ----
struct Metadata {
  std::int32_t* counts = nullptr;        // [E]
  std::int64_t* offsets = nullptr;       // [E + 1], exclusive scan of counts
  std::int32_t* tile_offsets = nullptr;  // [E + 1], exclusive scan of ceil(counts / tile_m)
  std::int32_t* sorted = nullptr;        // [A] sorted position -> assignment
  std::int32_t* slot = nullptr;          // [A] assignment -> sorted position
  std::int32_t* sorted_token = nullptr;  // [A] sorted position -> token
};
// Bytes of scratch the metadata of A assignments over E experts needs (the chunks' counters; 0
// for small A, which one kernel of one block sorts).
std::size_t metadata_scratch_bytes(std::int64_t A, int E);
// Stable sort of the assignments by expert. token_of [A] gives each assignment's token; null
// means uniform top-k (token = a / K). tile_m: the row tile the grouped GEMM will use.
// An expert id equal to E marks an unused slot: not counted, sorted after offsets[E].
void build_metadata(const std::int32_t* expert, const std::int32_t* token_of, int K, std::int64_t A,
                    int E, int tile_m, const Metadata& m, void* scratch, std::size_t scratch_bytes);
// offsets and tile_offsets [E + 1] of given counts [E] (build_metadata's scans alone).
void metadata_offsets(const std::int32_t* counts, int E, int tile_m, std::int64_t* offsets, std::int32_t* tile_offsets);
// offsets[e] = e * rows, tile_offsets[e] = e * ceil(rows / tile_m), e = 0..E (dense passes).
void uniform_offsets(std::int64_t rows, int E, int tile_m, std::int64_t* offsets, std::int32_t* tile_offsets);

// ---- token rounding (rounding.cu) ----
// The CPU's round_routing (src/core/rounding.cpp) on the device, bit for bit, without a host
// synchronization. Inputs: top-k ids / weights [T, K], probs [T, E] (router_probs), and the
// top-k metadata (counts, offsets, sorted, sorted_token). Outputs, of capacity
// rounding_capacity(): expert (E in unused slots), weight, token_of, token_offsets [T + 1],
// target [E] (the rounded counts). With `rounded` (buffers apart from topk's), also the rounded
// routing's metadata for row tile tile_m, what build_metadata would give, derived from the
// top-k metadata without a second sort; returns whether it did (up to 2^18 tokens).
std::int64_t rounding_capacity(std::int64_t T, int K, int E, int tile);
std::size_t rounding_scratch_bytes(std::int64_t T, int K, int E, int tile);
bool round_routing(const RoundingOptions& opt, std::int64_t T, int K, int E, const std::int32_t* ids,
                   const float* weights, const float* probs, const Metadata& topk, std::int32_t* expert_out,
                   float* weight_out, std::int32_t* token_of, std::int64_t* token_offsets, std::int32_t* target,
                   void* scratch, std::size_t scratch_bytes, int tile_m = 0, const Metadata* rounded = nullptr);

// ---- experts (grouped_gemm.cu) ----
// Row tile of the grouped kernels (tile_offsets must be built with it).
int grouped_tile_m();
// Which kernels a grouped projection runs: the portable ones (grouped_gemm.cu, and the sm_90a
// wgmma kernel of sm90/grouped_wgmma.cu where it applies), or the fused path's warp-specialized
// TMA kernels (sm90/grouped_ws.cu) with `stages` pipeline stages (0: the heuristic's; 1: no
// overlap). A projection the fused kernels cannot take runs on the portable ones, and the
// function returns why ("" when it ran as asked).
struct GroupedPath {
  bool fused = false;
  int stages = 0;
  // Where the fused up-projection may read its x rows by TMA instead of gathering them inside
  // the kernel. x_rows: the rows of x, which a dense pass (gather null) then reads in place.
  // x_stage: room for x_stage_rows (>= offsets[E]) rows of d elements, into which the routed
  // rows are first copied in sorted order where heuristics.hpp's up_stages_x says the copy pays.
  // 0 / null: the kernel gathers.
  std::int64_t x_rows = 0;
  std::uint16_t* x_stage = nullptr;
  std::int64_t x_stage_rows = 0;
  // Where set, each launch appends the kernel that ran ("up wgmma", "down mma.sync", "up ws staged",
  // ...; comma-separated): ForwardTrace::path names them, and tests see a fallback.
  std::string* ran = nullptr;
};
// act [A, lda_act] bf16 = activation(x[row(p)] . w13[e]^T) for every sorted position p of
// expert e; row(p) = gather[p], or p - offsets[e] when gather is null (a dense pass).
// max_tiles: an upper bound of tile_offsets[E] known on the host (A / tile_m + E).
std::string grouped_up(const std::uint16_t* x, std::int64_t d, const std::uint16_t* w13, std::int64_t n,
                       bool gated, Activation act, int E, const std::int64_t* offsets,
                       const std::int32_t* tile_offsets, std::int64_t max_tiles, const std::int32_t* gather,
                       std::uint16_t* a_out, std::int64_t lda_act, const GroupedPath& path = {});
// y [A, d] bf16 = act[p] . w2[e]^T. a_rows: rows allocated in act (>= A).
std::string grouped_down(const std::uint16_t* act, std::int64_t lda_act, std::int64_t n, const std::uint16_t* w2,
                         std::int64_t d, int E, const std::int64_t* offsets, const std::int32_t* tile_offsets,
                         std::int64_t max_tiles, std::int64_t a_rows, std::uint16_t* y,
                         const GroupedPath& path = {});

// Both projections, what grouped_up then grouped_down compute (the same arguments; y doubles as
// the up-projection's x_stage), in one launch of the fused kernels where heuristics.hpp ws_pair
// says so (decode sizes, routed rows staged). Returns false, having launched nothing, where it
// does not apply: then call the two.
bool grouped_up_down(const std::uint16_t* x, std::int64_t d, const std::uint16_t* w13, std::int64_t n, bool gated,
                     Activation act, int E, const std::int64_t* offsets, const std::int32_t* tile_offsets,
                     std::int64_t max_tiles, const std::int32_t* gather, std::uint16_t* a_out, std::int64_t lda_act,
                     const std::uint16_t* w2, std::int64_t a_rows, std::uint16_t* y, const GroupedPath& path_up);

// ---- combine (combine.cu) ----
// out[t] = sum_{a of t} weight[a] * y[slot[a]] + sum_s y_shared[s * T + t], fp32 accumulate,
// stored as fp32 (out_bf16 false) or bf16. token_offsets null: uniform K (a = t*K .. t*K+K-1).
// y and y_shared are bf16 (y_bf16) or fp32. y_shared may be null (S = 0).
void combine(const void* y, bool y_bf16, const void* y_shared, int S, const float* weight,
             const std::int32_t* slot, const std::int64_t* token_offsets, int K, std::int64_t T,
             std::int64_t d, void* out, bool out_bf16);

}  // namespace tilemoe::detail::gpu

namespace tilemoe::detail::gpu {
// ---- the sequential baseline (sequential.cu) ----
// y [offsets.back(), d] = expert e of rows offsets[e] .. offsets[e+1] for each e, one cuBLAS
// GEMM pair (plus an activation kernel) per expert from a host loop. offsets is a host copy
// (the caller synchronized to get it). Row p's input is x[gather[p]], or x[p - offsets[e]]
// when gather is null (a dense pass over all tokens). x, weights and y: bf16 (is_bf16) or fp32;
// the activation between the GEMMs is rounded to x's type; h in fp32.
void sequential_experts(const void* x, bool is_bf16, std::int64_t d, const void* w13, const void* w2,
                        std::int64_t n, bool gated, Activation act, const std::vector<std::int64_t>& offsets,
                        const std::int32_t* gather, void* y);
}  // namespace tilemoe::detail::gpu
