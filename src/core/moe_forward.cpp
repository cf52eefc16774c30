// The layer forward on the CPU, stage after stage, and the dispatch to the GPU backend.
#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <tuple>

#include "activation.hpp"
#include "blas.hpp"
#include "cuda_backend.hpp"
#include "tilemoe/moe_layer.hpp"

namespace tilemoe {

const char* to_string(Algorithm a) {
  switch (a) {
    case Algorithm::sequential: return "sequential";
    case Algorithm::grouped: return "grouped";
    case Algorithm::fused: return "fused";
  }
  return "?";
}

Algorithm parse_algorithm(std::string_view s) {
  for (auto a : {Algorithm::sequential, Algorithm::grouped, Algorithm::fused})
    if (s == to_string(a)) return a;
  throw InvalidArgument(detail::concat("algorithm = '", s, "': expected sequential, grouped or fused"));
}

MoeWeights MoeWeights::to(Device device) const {
  MoeWeights o;
  auto mv = [device](const Tensor& t) { return t.numel() > 0 ? t.to(device) : Tensor(); };
  o.router = mv(router);
  o.router_bias = mv(router_bias);
  o.w13 = mv(w13);
  o.w2 = mv(w2);
  o.shared_w13 = mv(shared_w13);
  o.shared_w2 = mv(shared_w2);
  return o;
}

MoeWeights MoeWeights::to(DType dtype) const {
  MoeWeights o = *this;
  auto cv = [dtype](const Tensor& t) { return t.numel() > 0 ? t.to(dtype) : Tensor(); };
  o.w13 = cv(w13);
  o.w2 = cv(w2);
  o.shared_w13 = cv(shared_w13);
  o.shared_w2 = cv(shared_w2);
  return o;
}

namespace {
// The weights' shapes, dtypes and device; the router's only where the layer's router runs.
void validate_weights(const MoeConfig& cfg, const MoeWeights& w, bool router_runs) {
  cfg.validate();
  const std::int64_t E = cfg.num_experts, d = cfg.d_model, n = cfg.d_expert;
  const std::int64_t rows = is_gated(cfg.activation) ? 2 * n : n;
  const Tensor& router = w.router;
  const Tensor& router_bias = w.router_bias;
  const Tensor& w13 = w.w13;
  const Tensor& w2 = w.w2;
  const Tensor& shared_w13 = w.shared_w13;
  const Tensor& shared_w2 = w.shared_w2;
  if (router_runs || router.defined()) {
    check_shape(router, "router", {E, d});
    check_dtype(router, "router", {DType::f32, DType::bf16});
  }
  check_shape(w13, "w13", {E, rows, d});
  check_dtype(w13, "w13", {DType::f32, DType::bf16});
  check_shape(w2, "w2", {E, d, n});
  check_dtype(w2, "w2", {w13.dtype()});
  const Device dev = w13.device();
  auto same_device = [dev](const Tensor& t, const char* name) {
    if (t.numel() > 0 && t.device() != dev)
      throw InvalidArgument(detail::concat(name, ".device = ", to_string(t.device()), ": expected ",
                                           to_string(dev), " like w13"));
  };
  same_device(router, "router");
  same_device(w2, "w2");
  if (cfg.router_bias && router_runs) {
    check_shape(router_bias, "router_bias", {E});
    check_dtype(router_bias, "router_bias", {DType::f32});
    same_device(router_bias, "router_bias");
  }
  if (cfg.num_shared > 0) {
    const std::int64_t ns = cfg.d_shared, srows = is_gated(cfg.activation) ? 2 * ns : ns;
    check_shape(shared_w13, "shared_w13", {cfg.num_shared, srows, d});
    check_shape(shared_w2, "shared_w2", {cfg.num_shared, d, ns});
    check_dtype(shared_w13, "shared_w13", {w13.dtype()});
    check_dtype(shared_w2, "shared_w2", {w13.dtype()});
    same_device(shared_w13, "shared_w13");
    same_device(shared_w2, "shared_w2");
  }
}
}  // namespace

void MoeWeights::validate(const MoeConfig& cfg) const { validate_weights(cfg, *this, true); }

namespace detail {
void check_given_routing_row(std::int64_t t, const std::int32_t* ids, const float* weights, int K, int E) {
  // The messages are built only on failure: this runs for every assignment of a forward.
  auto at = [t](const char* name, int k) { return concat(name, "[", t, ", ", k, "]"); };
  for (int k = 0; k < K; ++k) {
    if (ids[k] < 0 || ids[k] >= E)
      check_arg(false, at("topk_ids", k).c_str(), ids[k], concat("an expert id in [0, ", E, ")"));
    for (int j = 0; j < k; ++j)
      if (ids[j] == ids[k])
        check_arg(false, at("topk_ids", k).c_str(), ids[k],
                  concat("K distinct experts per token (topk_ids[", t, ", ", j, "] is ", ids[j], " too)"));
    if (!std::isfinite(weights[k])) check_arg(false, at("topk_weights", k).c_str(), weights[k], "a finite weight");
  }
}
}  // namespace detail

Tensor router_logits(const MoeWeights& w, const Tensor& x) {
  const std::int64_t T = x.dim(0), d = x.dim(1), E = w.router.dim(0);
  Tensor logits = Tensor::empty({T, E}, DType::f32);
  Tensor xf = x.dtype() == DType::f32 ? x : x.to(DType::f32);
  Tensor wf = w.router.dtype() == DType::f32 ? w.router : w.router.to(DType::f32);  // bf16 is exact in f32
  detail::gemm_nt(T, E, d, xf.data<float>(), d, wf.data<float>(), d, logits.data<float>(), E);
  return logits;
}

namespace {
void check_inputs(const MoeConfig& cfg, const MoeWeights& w, const Tensor& x, const ForwardOptions& opt) {
  const bool given = opt.topk_ids.defined() || opt.topk_weights.defined();
  validate_weights(cfg, w, !given);
  check_arg(x.rank() == 2, "x.rank", x.rank(), "2 ([tokens, d_model])");
  check_arg(x.dim(0) >= 1, "x.shape[0] (tokens)", x.dim(0), ">= 1");
  check_shape(x, "x", {-1, cfg.d_model});
  check_dtype(x, "x", {w.dtype()});
  if (x.device() != w.device())
    throw InvalidArgument(detail::concat("x.device = ", to_string(x.device()), ": expected ",
                                         to_string(w.device()), ", the weights' device"));
  if (!given) return;
  const std::int64_t T = x.dim(0), K = cfg.top_k;
  for (const auto& [t, name, dt] : {std::tuple{&opt.topk_ids, "topk_ids", DType::i32},
                                    std::tuple{&opt.topk_weights, "topk_weights", DType::f32}}) {
    check_arg(t->defined(), name, "undefined", "topk_ids and topk_weights both, or neither");
    check_shape(*t, name, {T, K});
    check_dtype(*t, name, {dt});
    if (t->device() != x.device())
      throw InvalidArgument(detail::concat(name, ".device = ", to_string(t->device()), ": expected ",
                                           to_string(x.device()), ", x's device"));
  }
  check_arg(!opt.rounding, "rounding", "set", "unset with topk_ids (rounding ranks by the layer's router scores)");
}
}  // namespace

namespace {
// A defined out of moe_forward_into: [T, d], x's dtype and device, and none of its bytes x's.
void check_out(const Tensor& x, const Tensor& out) {
  check_shape(out, "out", x.shape());
  check_dtype(out, "out", {x.dtype()});
  if (out.device() != x.device())
    throw InvalidArgument(detail::concat("out.device = ", to_string(out.device()), ": expected ",
                                         to_string(x.device()), ", x's device"));
  const auto* o = static_cast<const char*>(out.raw());
  const auto* xp = static_cast<const char*>(x.raw());
  const bool apart = o + out.nbytes() <= xp || xp + x.nbytes() <= o;
  check_arg(apart, "out", out.raw(), "memory apart from x's (the forward reads x while it writes out)");
}

Tensor forward(const MoeConfig& cfg, const MoeWeights& w, const Tensor& x, const ForwardOptions& opt,
               ForwardTrace* trace, Tensor into) {
  check_inputs(cfg, w, x, opt);
  if (into.defined()) check_out(x, into);
  if (opt.rounding) opt.rounding->validate();
  if (opt.pipeline_stages < 0 || opt.pipeline_stages > 4)
    throw InvalidArgument(detail::concat("pipeline_stages = ", opt.pipeline_stages,
                                         ": expected 0 (the heuristic's) or 1..4"));
  if (x.is_cuda()) return detail::cuda_moe_forward(cfg, w, x, opt, trace, into);
  check_arg(opt.stream == nullptr, "stream", opt.stream, "null for CPU tensors (a CUDA stream is for CUDA tensors)");
  check_finite(x, "x");
  std::vector<StageTime> times;
  auto last = std::chrono::steady_clock::now();
  auto lap = [&](const char* name) {
    if (!opt.time_stages) return;
    const auto now = std::chrono::steady_clock::now();
    times.push_back({name, std::chrono::duration<double, std::milli>(now - last).count()});
    last = now;
  };
  const RouterConfig rc = cfg.router_config();
  Tensor logits;
  Routing routing;
  if (opt.topk_ids.defined()) {  // the caller's routing
    const std::int64_t T = x.dim(0);
    const int K = cfg.top_k;
    const std::int32_t* ids = opt.topk_ids.data<std::int32_t>();
    const float* wts = opt.topk_weights.data<float>();
    for (std::int64_t t = 0; t < T; ++t) detail::check_given_routing_row(t, ids + t * K, wts + t * K, K, cfg.num_experts);
    routing = Routing::from_topk(T, cfg.num_experts, K, std::vector<std::int32_t>(ids, ids + T * K),
                                 std::vector<float>(wts, wts + T * K));
  } else {
    logits = router_logits(w, x);
    routing = route(rc, logits, cfg.router_bias ? w.router_bias : Tensor());
  }
  lap("router");
  std::optional<RoundingMetrics> metrics;
  if (opt.rounding) {
    metrics.emplace();
    routing = round_routing(routing, router_probabilities(rc, logits.data<float>(), x.dim(0)),
                            *opt.rounding, &*metrics);
    lap("rounding");
  }
  RoutingMetadata meta = build_metadata(routing);
  lap("metadata");
  Tensor y = experts_forward(cfg, w, x, routing, meta, opt.algorithm, opt.num_threads);
  lap("experts");
  Tensor out = combine(routing, meta, y);
  lap("combine");
  if (cfg.num_shared > 0) {
    add_shared_experts(cfg, w, x, out, opt.num_threads);
    lap("shared_experts");
  }
  if (trace) {
    trace->counts = meta.counts;
    trace->routing = std::move(routing);
    trace->rounding = metrics;
    trace->path = "cpu";
    trace->stages = std::move(times);
  }
  Tensor result = x.dtype() == DType::f32 ? out : out.to(x.dtype());
  if (!into.defined()) return result;
  std::memcpy(into.raw(), result.raw(), result.nbytes());
  return into;
}
}  // namespace

Tensor moe_forward(const MoeConfig& cfg, const MoeWeights& w, const Tensor& x, const ForwardOptions& opt,
                   ForwardTrace* trace) {
  return forward(cfg, w, x, opt, trace, Tensor());
}

Tensor moe_forward_into(const MoeConfig& cfg, const MoeWeights& w, const Tensor& x, Tensor out,
                        const ForwardOptions& opt, ForwardTrace* trace) {
  check_arg(out.defined(), "out", "undefined", "a tensor of x's shape, dtype and device");
  return forward(cfg, w, x, opt, trace, std::move(out));
}

std::vector<double> reference_forward(const MoeConfig& cfg, const MoeWeights& w_in, const Tensor& x_in,
                                      const Routing& r) {
  const MoeWeights w = w_in.device() == Device::cpu ? w_in : w_in.to(Device::cpu);
  const std::int64_t T = x_in.dim(0), d = cfg.d_model;
  check_arg(r.num_tokens == T, "routing.num_tokens", r.num_tokens, detail::concat("x.shape[0] = ", T));
  const std::vector<double> x = x_in.to_doubles();
  const std::vector<double> w13 = w.w13.to_doubles(), w2 = w.w2.to_doubles();
  const bool gated = is_gated(cfg.activation);
  std::vector<double> out(static_cast<std::size_t>(T * d), 0.0), a;

  // out_row += scale * expert(x_row), expert weights at w13e [rows13, d], w2e [d, n].
  auto expert = [&](const double* w13e, const double* w2e, std::int64_t n, const double* xr,
                    double scale, double* out_row) {
    a.assign(static_cast<std::size_t>(n), 0.0);
    for (std::int64_t j = 0; j < n; ++j) {
      double g = 0, u = 0;
      for (std::int64_t k = 0; k < d; ++k) g += w13e[j * d + k] * xr[k];
      if (gated)
        for (std::int64_t k = 0; k < d; ++k) u += w13e[(n + j) * d + k] * xr[k];
      a[j] = detail::activate<double>(cfg.activation, g, u);
    }
    for (std::int64_t i = 0; i < d; ++i) {
      double s = 0;
      for (std::int64_t j = 0; j < n; ++j) s += w2e[i * n + j] * a[j];
      out_row[i] += scale * s;
    }
  };

  const std::int64_t n = cfg.d_expert, rows = gated ? 2 * n : n;
  std::vector<double> sw13, sw2;
  if (cfg.num_shared > 0) {
    sw13 = w.shared_w13.to_doubles();
    sw2 = w.shared_w2.to_doubles();
  }
  const std::int64_t ns = cfg.d_shared, srows = gated ? 2 * ns : ns;
  for (std::int64_t t = 0; t < T; ++t) {
    const double* xr = x.data() + t * d;
    double* o = out.data() + t * d;
    for (std::int64_t k = r.token_offsets[t]; k < r.token_offsets[t + 1]; ++k) {
      const std::int64_t e = r.expert[k];
      expert(w13.data() + e * rows * d, w2.data() + e * d * n, n, xr, r.weight[k], o);
    }
    for (int s = 0; s < cfg.num_shared; ++s)
      expert(sw13.data() + s * srows * d, sw2.data() + s * d * ns, ns, xr, 1.0, o);
  }
  return out;
}

namespace {
template <class A>
double rel_err(const std::vector<A>& a, const std::vector<double>& b) {
  check_arg(a.size() == b.size(), "a.size()", a.size(), detail::concat("b.size() = ", b.size()));
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double av = static_cast<double>(a[i]);
    if (!std::isfinite(av)) return std::numeric_limits<double>::infinity();
    num += (av - b[i]) * (av - b[i]);
    den += b[i] * b[i];
  }
  if (den == 0) return num == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(num / den);
}
}  // namespace

double relative_error(const std::vector<float>& a, const std::vector<double>& b) { return rel_err(a, b); }
double relative_error(const std::vector<double>& a, const std::vector<double>& b) { return rel_err(a, b); }

}  // namespace tilemoe
