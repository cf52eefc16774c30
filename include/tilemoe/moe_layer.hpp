// The MoE layer forward pass: router -> top-k -> (token rounding) -> metadata -> experts ->
// combine. One API for the CPU and the GPU: the device of the tensors picks the backend.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tilemoe/config.hpp"
#include "tilemoe/rounding.hpp"
#include "tilemoe/routing.hpp"
#include "tilemoe/tensor.hpp"

namespace tilemoe {

// Weights in checkpoint layout (a linear layer's weight is [out, in]).
struct MoeWeights {
  Tensor router;       // [E, d] f32, or bf16 as many checkpoints store it (one bf16 GEMM on the GPU)
  Tensor router_bias;  // [E] f32, DeepSeek-V3's correction bias (chooses, never weighs); may be empty
  Tensor w13;          // [E, 2n, d] gate rows then up rows (gated), or [E, n, d]
  Tensor w2;           // [E, d, n]
  Tensor shared_w13;   // [S, 2ns, d] or empty when S = 0
  Tensor shared_w2;    // [S, d, ns]

  DType dtype() const { return w13.dtype(); }
  Device device() const { return w13.device(); }
  MoeWeights to(Device device) const;  // router weights keep their dtype
  MoeWeights to(DType dtype) const;    // converts the expert weights (CPU), not the router's
  void validate(const MoeConfig& cfg) const;  // shapes, dtypes, one device
};

// Seeded random weights scaled by 1/sqrt(fan_in), so activations stay O(1) through the layer.
MoeWeights random_weights(const MoeConfig& cfg, DType dtype, std::uint64_t seed);
// Seeded random tokens [T, d], entries of mean 0 and variance 1 (random_uniform).
Tensor random_tokens(std::int64_t T, std::int64_t d, DType dtype, std::uint64_t seed);

// How the routed experts are computed. All compute the same function.
enum class Algorithm {
  sequential,  // one GEMM per expert, expert after expert ("Sequential!")
  grouped,     // all experts' work in one pass over the expert-sorted rows
  fused,       // GPU: the Hopper path: persistent warp-specialized kernels, TMA weight loads
               // overlapped with wgmma, gather and SwiGLU fused (falls back to grouped's
               // kernels where it cannot run, and ForwardTrace::path says why)
};
const char* to_string(Algorithm a);
Algorithm parse_algorithm(std::string_view s);

struct ForwardOptions {
  Algorithm algorithm = Algorithm::grouped;
  std::optional<RoundingOptions> rounding;  // tile-aware token rounding when set
  int num_threads = 0;                      // CPU: 0 = all hardware threads
  // fused: shared-memory stages of the load pipeline, 0 = the heuristic's (4), 1 = no overlap
  // (load a tile, then compute it), at most 4.
  int pipeline_stages = 0;
  // Time each stage into ForwardTrace::stages (GPU: events, one synchronization at the end).
  bool time_stages = false;
  // GPU: the cudaStream_t to run on (an inference stack's current stream), null for
  // cudaStreamPerThread. The output is ready in that stream's order (read it there, or
  // synchronize first; the calling thread's cudaStreamPerThread, where Tensor::to copies, waits
  // for the forward too); a returned tensor is freed on that stream, which must outlive it
  // (moe_forward_into allocates none). Must be null for CPU tensors.
  void* stream = nullptr;
  // Routing the caller computed (an inference stack's own router): expert ids [T, K] int32 and
  // weights [T, K] fp32 on x's device, used as given (not renormalized). The layer's router does
  // not run then, and w.router is not read (it may be empty). Each token needs K distinct ids in
  // [0, E) and finite weights: checked, on the GPU with one host wait after a small copy kernel,
  // which check_routing = false skips, as does a stream being captured; unchecked, an id out of
  // range adds nothing (never a read past the experts). Not with rounding.
  Tensor topk_ids, topk_weights;
  bool check_routing = true;
};

struct StageTime {
  std::string name;
  double ms = 0;
};

// What a forward computed on the way, for tools, tests and teaching (host copies).
struct ForwardTrace {
  Routing routing;                 // the routing actually used (after rounding)
  std::vector<std::int64_t> counts;  // per expert
  std::optional<RoundingMetrics> rounding;
  // The kernels that ran (GPU: each projection's listed in [...]), and why, where not as asked.
  std::string path;
  std::vector<StageTime> stages;   // with ForwardOptions::time_stages, in order
  // GPU: the forward's device workspace beyond inputs, weights and output (routing, metadata,
  // the activation between the GEMMs, y; kept for the next call); 0 on the CPU.
  std::size_t workspace_bytes = 0;
};

// out [T, d], same dtype and device as x. x is [T, d] (f32 or bf16, same dtype as the expert
// weights). Throws InvalidArgument on mismatched shapes, dtypes, devices or non-finite x (CPU).
Tensor moe_forward(const MoeConfig& cfg, const MoeWeights& w, const Tensor& x,
                   const ForwardOptions& opt = {}, ForwardTrace* trace = nullptr);
// The same, written into out, which is returned: a buffer the caller keeps ([T, d], x's dtype
// and device, not overlapping x), e.g. the static output of a captured CUDA graph or a
// Tensor::from_blob over another framework's tensor. Nothing is allocated for the output.
Tensor moe_forward_into(const MoeConfig& cfg, const MoeWeights& w, const Tensor& x, Tensor out,
                        const ForwardOptions& opt = {}, ForwardTrace* trace = nullptr);

// ---- the stages, exposed for teaching and tests (CPU tensors) ----
// logits [T, E] fp32 = x . router^T (in fp32 from the stored x and router, f32 or bf16)
Tensor router_logits(const MoeWeights& w, const Tensor& x);
// y [A, d] fp32, row i for sorted position i, of the routed experts only.
Tensor experts_forward(const MoeConfig& cfg, const MoeWeights& w, const Tensor& x,
                       const Routing& r, const RoutingMetadata& meta, Algorithm algorithm,
                       int num_threads = 0);
// out[t] = sum over t's assignments a of weight[a] * y[slot[a]], in fp32; [T, d] fp32.
Tensor combine(const Routing& r, const RoutingMetadata& meta, const Tensor& y);
// shared experts of every token, added into out [T, d] fp32.
void add_shared_experts(const MoeConfig& cfg, const MoeWeights& w, const Tensor& x, Tensor& out,
                        int num_threads = 0);

// The float64 reference: the same layer for a given routing, every operation in double from
// the stored (possibly bf16) inputs. [T * d] row-major.
std::vector<double> reference_forward(const MoeConfig& cfg, const MoeWeights& w,
                                      const Tensor& x, const Routing& r);

// ||a - b|| / ||b|| (0 when both are zero; inf when a has a NaN or Inf).
double relative_error(const std::vector<float>& a, const std::vector<double>& b);
double relative_error(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace tilemoe
