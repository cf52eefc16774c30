// --stages: the grouped forward's stages timed one by one (CUDA events, median, no L2 flush),
// through the library's internal stage functions (src/cuda/stages.hpp). For finding where the
// time goes; the variants' numbers come from the public moe_forward.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <vector>

#include "tilemoe/tilemoe.hpp"

#if TILEMOE_WITH_CUDA
#include <cuda_runtime.h>

#include "cuda/heuristics.hpp"
#include "cuda/stages.hpp"

namespace bench {

using namespace tilemoe;

void time_stages(const MoeConfig& c, const MoeWeights& w, const Tensor& x, int reps) {
  namespace g = tilemoe::detail::gpu;
  const std::int64_t T = x.dim(0), d = c.d_model, n = c.d_expert, A = T * c.top_k;
  const int E = c.num_experts, K = c.top_k, tile = g::grouped_tile_m();
  const std::int64_t lda = g::act_row_stride(n);
  auto dev = [](std::int64_t count, DType t) { return Tensor::empty({std::max<std::int64_t>(count, 1)}, t, Device::cuda); };
  const bool wr_bf = w.router.dtype() == DType::bf16;
  const int parts = g::router_logit_parts(T, true, wr_bf);
  Tensor logits = dev(T * E * parts, DType::f32), xf = dev(static_cast<std::int64_t>(g::router_scratch_bytes(T, d, E, true, wr_bf)), DType::i32), ids = dev(A, DType::i32), wts = dev(A, DType::f32);
  Tensor counts = dev(E, DType::i32), offs = dev(E + 1, DType::i64), tiles = dev(E + 1, DType::i32);
  Tensor sorted = dev(A, DType::i32), slot = dev(A, DType::i32), stok = dev(A, DType::i32);
  const std::size_t sb = g::metadata_scratch_bytes(A, E);
  Tensor scratch = dev(static_cast<std::int64_t>(sb), DType::i32);
  Tensor act = dev(A * lda, DType::bf16), y = dev(A * d, DType::bf16), out = dev(T * d, DType::bf16);
  g::Metadata m{counts.data<std::int32_t>(), offs.data<std::int64_t>(), tiles.data<std::int32_t>(),
                sorted.data<std::int32_t>(), slot.data<std::int32_t>(), stok.data<std::int32_t>()};
  const RouterConfig rc = c.router_config();
  const float* bias = c.router_bias ? w.router_bias.data<float>() : nullptr;
  const std::int64_t max_tiles = (A + std::int64_t(E) * (tile - 1)) / tile + 1;
  auto u16 = [](const Tensor& t) { return static_cast<const std::uint16_t*>(t.raw()); };
  // The fused up-projection as the forward runs it: y's buffer, not written yet, is the room for
  // the routed x rows where it stages them (heuristics.hpp up_stages_x).
  g::GroupedPath fused_up_path{true, 0};
  fused_up_path.x_stage = static_cast<std::uint16_t*>(y.raw());
  fused_up_path.x_stage_rows = A;
  struct Stage { const char* name; std::function<void()> fn; double flops; };
  const double up_flops = 2.0 * A * d * (is_gated(c.activation) ? 2 * n : n), down_flops = 2.0 * A * d * n;
  std::vector<Stage> stages{
      {"router_logits", [&] { g::router_logits(x.raw(), true, w.router.raw(), wr_bf, T, d, E, logits.data<float>(), xf.raw()); }, 2.0 * T * E * d},
      {"router_topk", [&] { g::router_topk(rc, logits.data<float>(), bias, T, ids.data<std::int32_t>(), wts.data<float>(), parts); }, 0},
      {"metadata", [&] { g::build_metadata(ids.data<std::int32_t>(), nullptr, K, A, E, tile, m, scratch.raw(), sb); }, 0},
      {"grouped_up", [&] { g::grouped_up(u16(x), d, u16(w.w13), n, is_gated(c.activation), c.activation, E, m.offsets, m.tile_offsets, max_tiles, m.sorted_token, static_cast<std::uint16_t*>(act.raw()), lda); }, up_flops},
      {"grouped_down", [&] { g::grouped_down(u16(act), lda, n, u16(w.w2), d, E, m.offsets, m.tile_offsets, max_tiles, A, static_cast<std::uint16_t*>(y.raw())); }, down_flops},
      {"fused_up", [&] { g::grouped_up(u16(x), d, u16(w.w13), n, is_gated(c.activation), c.activation, E, m.offsets, m.tile_offsets, max_tiles, m.sorted_token, static_cast<std::uint16_t*>(act.raw()), lda, fused_up_path); }, up_flops},
      {"fused_down", [&] { g::grouped_down(u16(act), lda, n, u16(w.w2), d, E, m.offsets, m.tile_offsets, max_tiles, A, static_cast<std::uint16_t*>(y.raw()), {true, 0}); }, down_flops},
      {"combine", [&] { g::combine(y.raw(), true, nullptr, 0, wts.data<float>(), m.slot, nullptr, K, T, d, out.raw(), true); }, 0},
  };
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (auto& s : stages) s.fn();  // one pass in order, so every input exists
  for (auto& s : stages) {
    std::vector<float> v;
    for (int r = 0; r < reps + 2; ++r) {
      cudaEventRecord(a, cudaStreamPerThread);
      s.fn();
      cudaEventRecord(b, cudaStreamPerThread);
      cudaEventSynchronize(b);
      float ms = 0;
      cudaEventElapsedTime(&ms, a, b);
      if (r >= 2) v.push_back(ms);
    }
    std::sort(v.begin(), v.end());
    const double ms = v[v.size() / 2];
    std::printf("  stage %-14s %8.3f ms", s.name, ms);
    if (s.flops > 0) std::printf("  %7.1f TFLOP/s", s.flops / (ms * 1e-3) / 1e12);
    std::printf("\n");
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
}

}  // namespace bench
#endif
