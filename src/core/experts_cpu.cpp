// The routed and shared experts on the CPU, through OpenBLAS.
//   sequential: expert after expert, each one GEMM pair over all its rows, BLAS multithreaded.
//   grouped:    one flat list of tasks, each a whole expert (or an even piece of a large one),
//               claimed largest first by worker threads running single-threaded GEMMs: all
//               experts in one pass over the expert-sorted rows, so small experts no longer idle
//               the cores, and each expert's weights are streamed once, not once per row tile.
// bf16 storage: inputs and weights are widened to fp32 per tile or per expert, accumulation is
// fp32, and the activation between the two GEMMs is rounded to bf16 as the GPU stores it.
#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "activation.hpp"
#include "blas.hpp"
#include "tilemoe/moe_layer.hpp"

namespace tilemoe {
namespace {

// One expert's weights: w13 [rows13, d], w2 [d, n], in fp32 or bf16 storage.
struct ExpertView {
  const void* w13;
  const void* w2;
  std::int64_t rows13, n, d;
  bool bf16;
};

ExpertView expert_view(const Tensor& w13, const Tensor& w2, int e) {
  ExpertView v;
  v.rows13 = w13.dim(1);
  v.d = w13.dim(2);
  v.n = w2.dim(2);
  v.bf16 = w13.dtype() == DType::bf16;
  const std::size_t es = dtype_size(w13.dtype());
  v.w13 = static_cast<const char*>(w13.raw()) + static_cast<std::size_t>(e * v.rows13 * v.d) * es;
  v.w2 = static_cast<const char*>(w2.raw()) + static_cast<std::size_t>(e * v.d * v.n) * es;
  return v;
}

// Per-thread buffers; widened weights are kept for the last expert seen.
struct Scratch {
  std::vector<float> x, h, a, w13, w2;
  const void* cached = nullptr;
};

void widen(const void* src, bool is_bf16, std::int64_t count, std::vector<float>& dst) {
  dst.resize(static_cast<std::size_t>(count));
  if (is_bf16) {
    const bf16* p = static_cast<const bf16*>(src);
    for (std::int64_t i = 0; i < count; ++i) dst[i] = p[i].to_float();
  } else {
    const float* p = static_cast<const float*>(src);
    std::copy(p, p + count, dst.begin());
  }
}

// a[j] = act(g[j], u[j]) for j < n (plain activations ignore u), one loop per activation so that
// the choice is made once per row. The loops are straight-line code (detail::exp_fast, no libm
// call; -fno-trapping-math for this file, see CMakeLists.txt) that GCC vectorizes. On x86-64 the
// function is compiled twice, for AVX2 and for the baseline (SSE2), and the loader picks the one
// the CPU runs, so the binary stays portable. Both give the same bits: the same float operations
// in the same order (AVX2 without FMA, so nothing is contracted), only more lanes at a time.
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx2", "default")))
#endif
void activate_row(Activation act, const float* g, const float* u, float* a, std::int64_t n) {
  switch (act) {
    case Activation::swiglu:
      for (std::int64_t j = 0; j < n; ++j) a[j] = detail::silu(g[j]) * u[j];
      break;
    case Activation::geglu:
      for (std::int64_t j = 0; j < n; ++j) a[j] = detail::gelu_tanh(g[j]) * u[j];
      break;
    case Activation::gelu:
      for (std::int64_t j = 0; j < n; ++j) a[j] = detail::gelu_tanh(g[j]);
      break;
    case Activation::relu:
      for (std::int64_t j = 0; j < n; ++j) a[j] = std::max(g[j], 0.0f);
      break;
    case Activation::clamped_swiglu:
      for (std::int64_t j = 0; j < n; ++j) a[j] = detail::clamped_swiglu(g[j], u[j]);
      break;
  }
}

// y[r] = expert(x[rows[r]]) for r < m; y has row stride d. rows == nullptr means rows 0..m-1
// from row `first`. accumulate adds into y instead of storing.
void run_expert(const ExpertView& ev, Activation act, const Tensor& x, const std::int64_t* rows,
                std::int64_t first, std::int64_t m, float* y, bool accumulate, Scratch& s) {
  if (m == 0) return;
  const std::int64_t d = ev.d, n = ev.n, rows13 = ev.rows13;
  const bool x_bf16 = x.dtype() == DType::bf16;
  s.x.resize(static_cast<std::size_t>(m * d));
  for (std::int64_t r = 0; r < m; ++r) {
    const std::int64_t t = rows ? rows[r] : first + r;
    float* dst = s.x.data() + r * d;
    if (x_bf16) {
      const bf16* src = x.data<bf16>() + t * d;
      for (std::int64_t j = 0; j < d; ++j) dst[j] = src[j].to_float();
    } else {
      const float* src = x.data<float>() + t * d;
      std::copy(src, src + d, dst);
    }
  }
  const float* w13;
  const float* w2;
  if (ev.bf16) {
    if (s.cached != ev.w13) {
      widen(ev.w13, true, rows13 * d, s.w13);
      widen(ev.w2, true, d * n, s.w2);
      s.cached = ev.w13;
    }
    w13 = s.w13.data();
    w2 = s.w2.data();
  } else {
    w13 = static_cast<const float*>(ev.w13);
    w2 = static_cast<const float*>(ev.w2);
  }
  s.h.resize(static_cast<std::size_t>(m * rows13));
  detail::gemm_nt(m, rows13, d, s.x.data(), d, w13, d, s.h.data(), rows13);
  s.a.resize(static_cast<std::size_t>(m * n));
  for (std::int64_t r = 0; r < m; ++r) {
    const float* h = s.h.data() + r * rows13;
    float* a = s.a.data() + r * n;
    activate_row(act, h, rows13 > n ? h + n : h, a, n);  // gated: up follows gate in h
    if (ev.bf16)
      for (std::int64_t j = 0; j < n; ++j) a[j] = round_bf16(a[j]);
  }
  detail::gemm_nt(m, d, n, s.a.data(), n, w2, n, y, d, accumulate ? 1.0f : 0.0f);
}

struct Task {
  int expert;
  std::int64_t begin, end;  // sorted positions
};

// Rows per task: enough tasks to keep every thread busy, big enough for an efficient GEMM.
std::int64_t cpu_row_tile(std::int64_t total_rows, int threads) {
  const std::int64_t target = total_rows / (4 * std::max(threads, 1));
  return std::clamp<std::int64_t>(target, 32, 256);
}

// The most rows one grouped task takes. Each task streams its expert's whole weights through
// the cache (19 MB per qwen3-30b-a3b expert in fp32), so an expert is split only where one
// expert alone would hold up the other threads (a quarter of a thread's share), and never into
// pieces under kMinTaskRows.
constexpr std::int64_t kMinTaskRows = 256;
std::int64_t max_task_rows(std::int64_t total_rows, int threads) {
  return std::max(kMinTaskRows, total_rows / (4 * std::max(threads, 1)));
}

// Every expert with rows as ceil(count / max_rows) pieces of even size (no short tail piece that
// streams the whole weights for a few rows), largest first so that the last tasks claimed are
// the shortest and the threads finish together.
std::vector<Task> grouped_tasks(const RoutingMetadata& meta, std::int64_t max_rows) {
  std::vector<Task> tasks;
  for (int e = 0; e + 1 < static_cast<int>(meta.offsets.size()); ++e) {
    const std::int64_t begin = meta.offsets[e], count = meta.offsets[e + 1] - begin;
    const std::int64_t pieces = (count + max_rows - 1) / max_rows;
    for (std::int64_t p = 0; p < pieces; ++p)
      tasks.push_back({e, begin + count * p / pieces, begin + count * (p + 1) / pieces});
  }
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) {
    return a.end - a.begin > b.end - b.begin;
  });
  return tasks;
}

template <class Fn>
void parallel_tasks(std::size_t count, int threads, Fn&& fn) {
  threads = static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(threads), count));
  std::atomic<std::size_t> next{0};
  auto worker = [&] {
    Scratch s;
    for (std::size_t i; (i = next.fetch_add(1)) < count;) fn(i, s);
  };
  if (threads <= 1) {
    worker();
    return;
  }
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
}

}  // namespace

Tensor experts_forward(const MoeConfig& cfg, const MoeWeights& w, const Tensor& x, const Routing& r,
                       const RoutingMetadata& meta, Algorithm algorithm, int num_threads) {
  const std::int64_t A = r.num_assignments(), d = cfg.d_model;
  Tensor y = Tensor::empty({A, d}, DType::f32);
  const int threads = num_threads > 0 ? num_threads : detail::hardware_threads();
  const std::int64_t* rows = meta.sorted_token.data();
  switch (algorithm) {
    case Algorithm::sequential: {
      detail::BlasThreads guard(threads);
      Scratch s;
      for (int e = 0; e < cfg.num_experts; ++e)
        run_expert(expert_view(w.w13, w.w2, e), cfg.activation, x, rows + meta.offsets[e], 0,
                   meta.counts[e], y.data<float>() + meta.offsets[e] * d, false, s);
      break;
    }
    case Algorithm::grouped: {
      const std::vector<Task> tasks = grouped_tasks(meta, max_task_rows(A, threads));
      detail::BlasThreads guard(1);
      float* out = y.data<float>();
      parallel_tasks(tasks.size(), threads, [&](std::size_t i, Scratch& s) {
        const Task& t = tasks[i];
        run_expert(expert_view(w.w13, w.w2, t.expert), cfg.activation, x, rows + t.begin, 0,
                   t.end - t.begin, out + t.begin * d, false, s);
      });
      break;
    }
    case Algorithm::fused:
      throw InvalidArgument("algorithm = fused: the fused path runs on the GPU only; use "
                            "sequential or grouped on the CPU");
  }
  return y;
}

void add_shared_experts(const MoeConfig& cfg, const MoeWeights& w, const Tensor& x, Tensor& out,
                        int num_threads) {
  if (cfg.num_shared == 0) return;
  const std::int64_t T = x.dim(0), d = cfg.d_model;
  const int threads = num_threads > 0 ? num_threads : detail::hardware_threads();
  const std::int64_t tile = cpu_row_tile(T * cfg.num_shared, threads);
  const std::size_t ntiles = static_cast<std::size_t>((T + tile - 1) / tile);
  detail::BlasThreads guard(1);
  float* o = out.data<float>();
  parallel_tasks(ntiles, threads, [&](std::size_t i, Scratch& s) {
    const std::int64_t b = static_cast<std::int64_t>(i) * tile, m = std::min(tile, T - b);
    for (int e = 0; e < cfg.num_shared; ++e)
      run_expert(expert_view(w.shared_w13, w.shared_w2, e), cfg.activation, x, nullptr, b, m,
                 o + b * d, true, s);
  });
}

Tensor combine(const Routing& r, const RoutingMetadata& meta, const Tensor& y) {
  const std::int64_t T = r.num_tokens, d = y.dim(1);
  Tensor out = Tensor::empty({T, d}, DType::f32);
  const float* yp = y.data<float>();
  float* o = out.data<float>();
  // Each token's row is summed by one thread in assignment order: deterministic.
  const std::int64_t chunk = 64;
  parallel_tasks(static_cast<std::size_t>((T + chunk - 1) / chunk), detail::hardware_threads(),
                 [&](std::size_t i, Scratch&) {
                   const std::int64_t end = std::min<std::int64_t>(T, (static_cast<std::int64_t>(i) + 1) * chunk);
                   for (std::int64_t t = static_cast<std::int64_t>(i) * chunk; t < end; ++t) {
                     float* dst = o + t * d;
                     std::fill(dst, dst + d, 0.0f);
                     for (std::int64_t a = r.token_offsets[t]; a < r.token_offsets[t + 1]; ++a) {
                       const float wgt = r.weight[a];
                       const float* src = yp + meta.slot[a] * d;
                       for (std::int64_t j = 0; j < d; ++j) dst[j] += wgt * src[j];
                     }
                   }
                 });
  return out;
}

}  // namespace tilemoe
