// The MoE forward on the GPU (detail::cuda_moe_forward): router -> top-k -> (rounding) ->
// metadata -> experts (sequential, grouped or fused) -> combine, all on cudaStreamPerThread
// or the caller's stream (ForwardOptions::stream).
// grouped and fused: no host synchronization unless a trace or stage times are asked for
// (token rounding included: it runs on the device too), so a warmed-up forward can be captured
// in a CUDA graph. Scratch memory comes from a per-thread grow-only buffer; only the output is
// allocated per call, from tilemoe's stream-ordered pool (runtime.cu cuda_alloc).
// dtypes: grouped and fused run bf16 only (fp32 throws InvalidArgument, pointing at
// sequential); sequential runs bf16 and fp32 through cuBLAS.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "context.cuh"
#include "core/cuda_backend.hpp"
#include "heuristics.hpp"
#include "stages.hpp"
#include "tilemoe/rounding.hpp"

namespace tilemoe::detail {
namespace {

template <class T>
std::vector<T> to_host(const T* p, std::size_t count) {
  std::vector<T> v(count);
  if (count) {
    TILEMOE_CUDA_CHECK(cudaMemcpyAsync(v.data(), p, count * sizeof(T), cudaMemcpyDeviceToHost, current_stream()));
    TILEMOE_CUDA_CHECK(cudaStreamSynchronize(current_stream()));
  }
  return v;
}

const std::uint16_t* u16(const Tensor& t) { return static_cast<const std::uint16_t*>(t.raw()); }

// Metadata buffers for `rows` assignments over E experts, carved from c.
gpu::Metadata take_metadata(Carver& c, int E, std::int64_t rows) {
  gpu::Metadata m;
  m.counts = c.take<std::int32_t>(static_cast<std::size_t>(E));
  m.offsets = c.take<std::int64_t>(static_cast<std::size_t>(E) + 1);
  m.tile_offsets = c.take<std::int32_t>(static_cast<std::size_t>(E) + 1);
  m.sorted = c.take<std::int32_t>(static_cast<std::size_t>(rows));
  m.slot = c.take<std::int32_t>(static_cast<std::size_t>(rows));
  m.sorted_token = c.take<std::int32_t>(static_cast<std::size_t>(rows));
  return m;
}

// The metrics round_routing reports on the CPU, from the top-k and the rounded routing.
RoundingMetrics rounding_metrics(const Routing& topk, const Routing& r, int tile) {
  const int E = topk.num_experts;
  RoundingMetrics m;
  m.counts_before.assign(E, 0);
  m.counts_after.assign(E, 0);
  for (auto e : topk.expert) ++m.counts_before[e];
  for (auto e : r.expert) ++m.counts_after[e];
  m.utilization_before = tile_utilization(m.counts_before, tile);
  m.utilization_after = tile_utilization(m.counts_after, tile);
  m.padded_rows_before = padded_rows(m.counts_before, tile);
  m.padded_rows_after = padded_rows(m.counts_after, tile);
  for (int e = 0; e < E; ++e) {
    m.dropped += std::max<std::int64_t>(0, m.counts_before[e] - m.counts_after[e]);
    m.added += std::max<std::int64_t>(0, m.counts_after[e] - m.counts_before[e]);
  }
  std::int64_t changed = 0;
  for (std::int64_t t = 0; t < topk.num_tokens; ++t) {
    const auto a0 = topk.token_offsets[t], a1 = topk.token_offsets[t + 1];
    const auto b0 = r.token_offsets[t], b1 = r.token_offsets[t + 1];
    bool same = a1 - a0 == b1 - b0;
    for (std::int64_t i = 0; same && i < a1 - a0; ++i) same = topk.expert[a0 + i] == r.expert[b0 + i];
    changed += same ? 0 : 1;
  }
  m.tokens_changed = topk.num_tokens == 0 ? 0.0 : static_cast<double>(changed) / static_cast<double>(topk.num_tokens);
  m.max_load = E == 0 ? 0 : *std::max_element(m.counts_after.begin(), m.counts_after.end());
  m.min_load = E == 0 ? 0 : *std::min_element(m.counts_after.begin(), m.counts_after.end());
  m.assignments_before = topk.num_assignments();
  m.assignments_after = r.num_assignments();
  return m;
}

// Stage times from events recorded on the stream between the stages: no synchronization until
// finish(), which waits for the last event.
class StageTimer {
 public:
  explicit StageTimer(bool on) : on_(on) {
    if (on_) lap("");
  }
  ~StageTimer() {
    for (auto& m : marks_) cudaEventDestroy(m.event);
  }
  StageTimer(const StageTimer&) = delete;
  StageTimer& operator=(const StageTimer&) = delete;
  void lap(const char* name) {
    if (!on_) return;
    Mark m{name, nullptr};
    TILEMOE_CUDA_CHECK(cudaEventCreate(&m.event));
    marks_.push_back(m);
    TILEMOE_CUDA_CHECK(cudaEventRecord(m.event, current_stream()));
  }
  std::vector<StageTime> finish() {
    std::vector<StageTime> out;
    if (!on_ || marks_.empty()) return out;
    TILEMOE_CUDA_CHECK(cudaEventSynchronize(marks_.back().event));
    for (std::size_t i = 1; i < marks_.size(); ++i) {
      float ms = 0;
      TILEMOE_CUDA_CHECK(cudaEventElapsedTime(&ms, marks_[i - 1].event, marks_[i].event));
      out.push_back({marks_[i].name, ms});
    }
    return out;
  }

 private:
  struct Mark {
    const char* name;
    cudaEvent_t event;
  };
  bool on_;
  std::vector<Mark> marks_;
};

}  // namespace

Tensor cuda_moe_forward(const MoeConfig& cfg, const MoeWeights& w, const Tensor& x, const ForwardOptions& opt,
                        ForwardTrace* trace, Tensor out) {
  using namespace gpu;
  const bool bf = x.dtype() == DType::bf16;
  const bool one_launch = opt.algorithm == Algorithm::grouped || opt.algorithm == Algorithm::fused;
  if (one_launch && !bf)
    throw InvalidArgument(concat("x.dtype = fp32: algorithm ", to_string(opt.algorithm),
                                 " on cuda runs bf16 only; use bf16 tensors, or algorithm sequential (cuBLAS, "
                                 "fp32) on cuda"));
  const StreamScope on_stream(static_cast<cudaStream_t>(opt.stream));  // every stage below runs there
  StageTimer timer(opt.time_stages);
  const RouterConfig rc = cfg.router_config();
  const std::int64_t T = x.dim(0), d = cfg.d_model, n = cfg.d_expert;
  const int E = cfg.num_experts, K = cfg.top_k, S = cfg.num_shared;
  const std::int64_t ns = cfg.d_shared;
  const bool gated = is_gated(cfg.activation);
  const int tile_m = grouped_tile_m();
  const std::size_t es = bf ? 2 : 4;
  const bool wr_bf = w.router.dtype() == DType::bf16;
  const bool given = opt.topk_ids.defined();  // the caller's routing (checked by the caller for shapes)

  // One scratch layout for every stage (sized for the rounded routing when rounding is on).
  std::int64_t A = T * K;
  std::int64_t A_cap = A;  // rounding adds at most tile - 1 assignments per expert
  if (opt.rounding) A_cap = rounding_capacity(T, K, E, opt.rounding->tile);
  const std::int64_t lda = act_row_stride(n), lda_s = act_row_stride(ns);
  auto layout = [&](Carver& c) {
    struct P {
      float* logits; void* rscratch; std::int32_t* ids; float* wts; Metadata m; void* meta_scratch; std::size_t meta_bytes;
      std::uint16_t* act; void* y; std::int64_t* s_off; std::int32_t* s_tiles; std::uint16_t* act_s; void* ys;
      float* probs; std::int32_t* r_expert; float* r_weight; std::int32_t* r_tok; std::int64_t* r_off;
      std::int32_t* target; void* r_scratch; std::size_t r_bytes; Metadata m0; int* bad;
    } p{};
    // (The caller's routing: no logits, one int for the check of its ids and weights.)
    p.logits = c.take<float>(given ? 0 : static_cast<std::size_t>(T * E * router_logit_parts(T, bf, wr_bf)));
    p.rscratch = c.take<unsigned char>(given ? 0 : router_scratch_bytes(T, d, E, bf, wr_bf));
    p.bad = c.take<int>(given ? 1 : 0);
    p.ids = c.take<std::int32_t>(static_cast<std::size_t>(A));
    if (opt.rounding) {
      p.probs = c.take<float>(static_cast<std::size_t>(T * E));
      p.r_expert = c.take<std::int32_t>(static_cast<std::size_t>(A_cap));
      p.r_weight = c.take<float>(static_cast<std::size_t>(A_cap));
      p.r_tok = c.take<std::int32_t>(static_cast<std::size_t>(A_cap));
      p.r_off = c.take<std::int64_t>(static_cast<std::size_t>(T) + 1);
      p.target = c.take<std::int32_t>(static_cast<std::size_t>(E));
      p.r_bytes = rounding_scratch_bytes(T, K, E, opt.rounding->tile);
      p.r_scratch = c.take<unsigned char>(p.r_bytes);
      // The top-k routing's metadata, the rounding's input (m then takes the rounded one's).
      p.m0 = take_metadata(c, E, A);
    }
    p.wts = c.take<float>(static_cast<std::size_t>(A));
    p.m = take_metadata(c, E, A_cap);
    p.meta_bytes = metadata_scratch_bytes(A_cap, E);
    p.meta_scratch = c.take<unsigned char>(p.meta_bytes);
    const bool grouped = one_launch;  // grouped and fused keep the activation between the GEMMs
    p.act = c.take<std::uint16_t>(grouped ? static_cast<std::size_t>(A_cap * lda) : 0);
    p.y = c.take<unsigned char>(static_cast<std::size_t>(A_cap * d) * es);
    p.s_off = c.take<std::int64_t>(static_cast<std::size_t>(S) + 1);
    p.s_tiles = c.take<std::int32_t>(static_cast<std::size_t>(S) + 1);
    p.act_s = c.take<std::uint16_t>(grouped ? static_cast<std::size_t>(S * T * lda_s) : 0);
    p.ys = c.take<unsigned char>(static_cast<std::size_t>(S * T * d) * es);
    return p;
  };
  Carver sizer;
  layout(sizer);
  DeviceBuffer& buf = scratch(Scratch::forward);
  buf.reserve(sizer.bytes());
  const bool capturing = stream_capturing(current_stream());
  const std::int64_t max_tiles = (A_cap + std::int64_t(E) * (tile_m - 1)) / tile_m + 1;
  if (one_launch) (void)tile_counters(max_tiles);  // allocated here, ahead of any graph capture
  Carver carver(buf.get());
  const auto P = layout(carver);

  if (given) {
    // The caller's routing, copied where the layer's router would have written its own; checked
    // with one host wait unless the caller opts out or the stream is being captured.
    const std::int32_t* ids_in = opt.topk_ids.data<std::int32_t>();
    const float* w_in = opt.topk_weights.data<float>();
    take_routing(ids_in, w_in, T, K, E, P.ids, P.wts, P.bad);
    if (opt.check_routing && !capturing) {
      const int bad = to_host(P.bad, 1)[0];
      if (bad != kNoBadToken) {
        const std::vector<std::int32_t> ids = to_host(ids_in + std::int64_t(bad) * K, static_cast<std::size_t>(K));
        const std::vector<float> wts = to_host(w_in + std::int64_t(bad) * K, static_cast<std::size_t>(K));
        check_given_routing_row(bad, ids.data(), wts.data(), K, E);
      }
    }
    timer.lap("given_routing");
  } else {
    // Router.
    const int parts = router_logits(x.raw(), bf, w.router.raw(), wr_bf, T, d, E, P.logits, P.rscratch);
    const float* bias = cfg.router_bias && w.router_bias.numel() > 0 ? w.router_bias.data<float>() : nullptr;
    timer.lap("router_logits");
    // With rounding, the top-k pass also writes the probabilities the rounding ranks tokens by.
    router_topk(rc, P.logits, bias, T, P.ids, P.wts, parts, opt.rounding ? P.probs : nullptr);
    timer.lap("router_topk");
  }

  // Token rounding, on the device: the rounded routing keeps the capacity A_cap, unused slots
  // carry expert id E and are ignored from the metadata on.
  const std::int32_t* expert = P.ids;
  const float* weight = P.wts;
  const std::int64_t* token_offsets = nullptr;
  const std::int32_t* token_of = nullptr;
  bool have_metadata = false;
  if (opt.rounding) {
    build_metadata(P.ids, nullptr, K, A, E, tile_m, P.m0, P.meta_scratch, P.meta_bytes);
    timer.lap("rounding_metadata");
    // The rounding also derives the rounded routing's metadata from the top-k one (no second sort).
    have_metadata = round_routing(*opt.rounding, T, K, E, P.ids, P.wts, P.probs, P.m0, P.r_expert, P.r_weight,
                                  P.r_tok, P.r_off, P.target, P.r_scratch, P.r_bytes, tile_m, &P.m);
    expert = P.r_expert;
    weight = P.r_weight;
    token_offsets = P.r_off;
    token_of = P.r_tok;
    A = A_cap;
    timer.lap("rounding");
  }

  if (!have_metadata) build_metadata(expert, token_of, K, A, E, tile_m, P.m, P.meta_scratch, P.meta_bytes);
  timer.lap("metadata");

  // Experts.
  std::string path = to_string(opt.algorithm);
  if (one_launch) {
    std::string kernels;  // each projection's kernel, in launch order
    GroupedPath gp{opt.algorithm == Algorithm::fused, opt.pipeline_stages};
    gp.ran = &kernels;
    std::string why;  // the first reason a fused projection ran on the portable kernels
    auto note = [&](std::string r, const char* what) {
      if (!r.empty() && why.empty()) why = std::string(what) + ": " + r;
    };
    GroupedPath gp_up = gp;  // y is not written yet: room for the routed x rows, if staged
    gp_up.x_stage = static_cast<std::uint16_t*>(P.y);
    gp_up.x_stage_rows = A_cap;
    // Decode sizes: both projections in one launch, except where stage times are asked for
    // (those time the two launches).
    const bool pair = !opt.time_stages &&
                      grouped_up_down(u16(x), d, u16(w.w13), n, gated, cfg.activation, E, P.m.offsets,
                                      P.m.tile_offsets, max_tiles, P.m.sorted_token, P.act, lda, u16(w.w2), A_cap,
                                      static_cast<std::uint16_t*>(P.y), gp_up);
    if (!pair) {
      note(grouped_up(u16(x), d, u16(w.w13), n, gated, cfg.activation, E, P.m.offsets, P.m.tile_offsets, max_tiles,
                      P.m.sorted_token, P.act, lda, gp_up),
           "up-projection");
      timer.lap("up_projection");
      note(grouped_down(P.act, lda, n, u16(w.w2), d, E, P.m.offsets, P.m.tile_offsets, max_tiles, A_cap,
                        static_cast<std::uint16_t*>(P.y), gp),
           "down-projection");
      timer.lap("down_projection");
    }
    if (S > 0) {
      uniform_offsets(T, S, tile_m, P.s_off, P.s_tiles);
      const std::int64_t s_tiles = S * ((T + tile_m - 1) / tile_m);
      GroupedPath gp_dense = gp;  // x read in place
      gp_dense.x_rows = T;
      note(grouped_up(u16(x), d, u16(w.shared_w13), ns, gated, cfg.activation, S, P.s_off, P.s_tiles, s_tiles,
                      nullptr, P.act_s, lda_s, gp_dense),
           "shared up-projection");
      note(grouped_down(P.act_s, lda_s, ns, u16(w.shared_w2), d, S, P.s_off, P.s_tiles, s_tiles, S * T,
                        static_cast<std::uint16_t*>(P.ys), gp),
           "shared down-projection");
      timer.lap("shared_experts");
    }
    if (gp.fused)
      path = why.empty() ? std::string("fused: sm_90a warp-specialized TMA + wgmma kernels") +
                               (pair ? ", both projections in one launch" : "")
                         : "fused, partly on the portable grouped kernels (" + why + ")";
    path += " [" + kernels + "]";
  } else {
    std::vector<std::int64_t> offsets = to_host(P.m.offsets, static_cast<std::size_t>(E) + 1);
    sequential_experts(x.raw(), bf, d, w.w13.raw(), w.w2.raw(), n, gated, cfg.activation, offsets, P.m.sorted_token,
                       P.y);
    if (S > 0) {
      std::vector<std::int64_t> soff(static_cast<std::size_t>(S) + 1);
      for (int s = 0; s <= S; ++s) soff[s] = s * T;
      sequential_experts(x.raw(), bf, d, w.shared_w13.raw(), w.shared_w2.raw(), ns, gated, cfg.activation, soff,
                         nullptr, P.ys);
    }
    timer.lap("experts");
  }

  if (!out.defined()) out = Tensor::empty({T, d}, x.dtype(), Device::cuda);
  combine(P.y, bf, S > 0 ? P.ys : nullptr, S, weight, P.m.slot, token_offsets, K, T, d, out.raw(), bf);
  timer.lap("combine");

  if (trace) {
    trace->path = path;
    trace->stages = timer.finish();
    trace->workspace_bytes = sizer.bytes();
    std::vector<std::int32_t> counts = to_host(P.m.counts, static_cast<std::size_t>(E));
    trace->counts.assign(counts.begin(), counts.end());
    Routing topk = Routing::from_topk(T, E, K, to_host(P.ids, static_cast<std::size_t>(T * K)),
                                      to_host(P.wts, static_cast<std::size_t>(T * K)));
    if (opt.rounding) {
      Routing r;
      r.num_tokens = T;
      r.num_experts = E;
      r.token_offsets = to_host(P.r_off, static_cast<std::size_t>(T) + 1);
      const std::size_t total = static_cast<std::size_t>(r.token_offsets.back());
      r.expert = to_host(P.r_expert, total);
      r.weight = to_host(P.r_weight, total);
      trace->rounding = rounding_metrics(topk, r, opt.rounding->tile);
      trace->routing = std::move(r);
    } else {
      trace->routing = std::move(topk);
      trace->rounding.reset();
    }
  }
  return out;
}

}  // namespace tilemoe::detail
