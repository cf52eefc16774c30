// MoeConfig validation and the presets. Figures from each model's published config.json
// (HuggingFace model cards); see docs/presets.md.
#include "tilemoe/config.hpp"

#include <algorithm>

#include "tilemoe/error.hpp"

namespace tilemoe {

const char* to_string(RouterKind k) {
  switch (k) {
    case RouterKind::softmax_topk: return "softmax_topk";
    case RouterKind::topk_softmax: return "topk_softmax";
    case RouterKind::sigmoid_group_topk: return "sigmoid_group_topk";
    case RouterKind::top1: return "top1";
  }
  return "?";
}

const char* to_string(Activation a) {
  switch (a) {
    case Activation::swiglu: return "swiglu";
    case Activation::geglu: return "geglu";
    case Activation::gelu: return "gelu";
    case Activation::relu: return "relu";
    case Activation::clamped_swiglu: return "clamped_swiglu";
  }
  return "?";
}

RouterKind parse_router_kind(std::string_view s) {
  for (auto k : {RouterKind::softmax_topk, RouterKind::topk_softmax, RouterKind::sigmoid_group_topk,
                 RouterKind::top1})
    if (s == to_string(k)) return k;
  throw InvalidArgument(detail::concat("router = '", s,
                                       "': expected softmax_topk, topk_softmax, sigmoid_group_topk or top1"));
}

Activation parse_activation(std::string_view s) {
  for (auto a : {Activation::swiglu, Activation::geglu, Activation::gelu, Activation::relu,
                 Activation::clamped_swiglu})
    if (s == to_string(a)) return a;
  throw InvalidArgument(detail::concat("activation = '", s,
                                       "': expected swiglu, geglu, gelu, relu or clamped_swiglu"));
}

bool is_gated(Activation a) {
  return a == Activation::swiglu || a == Activation::geglu || a == Activation::clamped_swiglu;
}

void RouterConfig::validate() const {
  check_arg(num_experts >= 1 && num_experts <= 4096, "num_experts", num_experts, "1 <= num_experts <= 4096");
  check_arg(top_k >= 1 && top_k <= num_experts, "top_k", top_k,
            detail::concat("1 <= top_k <= num_experts (", num_experts, ")"));
  if (kind == RouterKind::top1) check_arg(top_k == 1, "top_k", top_k, "1 for the top1 router");
  check_arg(n_groups >= 1 && num_experts % n_groups == 0, "n_groups", n_groups,
            detail::concat("a divisor of num_experts (", num_experts, ")"));
  check_arg(topk_groups >= 1 && topk_groups <= n_groups, "topk_groups", topk_groups,
            detail::concat("1 <= topk_groups <= n_groups (", n_groups, ")"));
  if (kind == RouterKind::sigmoid_group_topk)
    check_arg(top_k <= topk_groups * (num_experts / n_groups), "top_k", top_k,
              detail::concat("at most the experts in the kept groups (",
                             topk_groups * (num_experts / n_groups), ")"));
  check_arg(routed_scale > 0.0f && routed_scale < 1e6f, "routed_scale", routed_scale, "0 < routed_scale < 1e6");
}

RouterConfig MoeConfig::router_config() const {
  RouterConfig r;
  r.kind = router;
  r.num_experts = num_experts;
  r.top_k = top_k;
  r.renormalize = renormalize;
  r.n_groups = n_groups;
  r.topk_groups = topk_groups;
  r.routed_scale = routed_scale;
  return r;
}

void MoeConfig::validate() const {
  check_arg(d_model >= 1 && d_model <= (1 << 20), "d_model", d_model, "1 <= d_model <= 2^20");
  check_arg(d_expert >= 1 && d_expert <= (1 << 20), "d_expert", d_expert, "1 <= d_expert <= 2^20");
  check_arg(num_experts >= 1 && num_experts <= 4096, "num_experts", num_experts, "1 <= num_experts <= 4096");
  check_arg(top_k >= 1 && top_k <= num_experts, "top_k", top_k,
            detail::concat("1 <= top_k <= num_experts (", num_experts, ")"));
  check_arg(num_shared >= 0 && num_shared <= 64, "num_shared", num_shared, "0 <= num_shared <= 64");
  if (num_shared > 0) check_arg(d_shared >= 1, "d_shared", d_shared, ">= 1 when num_shared > 0");
  check_arg(num_layers >= 1, "num_layers", num_layers, ">= 1");
  check_arg(num_dense_layers >= 0 && num_dense_layers <= num_layers, "num_dense_layers",
            num_dense_layers, detail::concat("0 <= num_dense_layers <= num_layers (", num_layers, ")"));
  router_config().validate();
}

double MoeConfig::flops_per_token() const {
  const double rows = is_gated(activation) ? 3.0 : 2.0;  // gate+up+down or up+down
  return 2.0 * rows * static_cast<double>(d_model) *
         (static_cast<double>(top_k) * d_expert + static_cast<double>(num_shared) * d_shared);
}

namespace {

MoeConfig make(std::string name, std::int64_t d, std::int64_t n, int E, int K) {
  MoeConfig c;
  c.name = std::move(name);
  c.d_model = d;
  c.d_expert = n;
  c.num_experts = E;
  c.top_k = K;
  return c;
}

std::vector<MoeConfig> build_presets() {
  std::vector<MoeConfig> v;
  {  // deepseek-ai/DeepSeek-V3 config.json
    MoeConfig c = make("deepseek-v3", 7168, 2048, 256, 8);
    c.num_shared = 1; c.d_shared = 2048;
    c.router = RouterKind::sigmoid_group_topk; c.renormalize = true;
    c.n_groups = 8; c.topk_groups = 4; c.routed_scale = 2.5f; c.router_bias = true;
    c.num_layers = 61; c.num_dense_layers = 3; c.d_dense_ff = 18432;
    c.n_heads = 128; c.n_kv_heads = 128; c.head_dim = 128; c.vocab = 129280;
    c.source = "deepseek-ai/DeepSeek-V3 config.json (MLA attention approximated as MHA, head_dim 128)";
    v.push_back(c);
  }
  {  // moonshotai/Kimi-K2-Instruct config.json
    MoeConfig c = make("kimi-k2", 7168, 2048, 384, 8);
    c.num_shared = 1; c.d_shared = 2048;
    c.router = RouterKind::sigmoid_group_topk; c.renormalize = true;
    c.n_groups = 1; c.topk_groups = 1; c.routed_scale = 2.827f; c.router_bias = true;
    c.num_layers = 61; c.num_dense_layers = 1; c.d_dense_ff = 18432;
    c.n_heads = 64; c.n_kv_heads = 64; c.head_dim = 128; c.vocab = 163840;
    c.source = "moonshotai/Kimi-K2-Instruct config.json (MLA approximated as MHA)";
    v.push_back(c);
  }
  {  // Qwen/Qwen3-30B-A3B config.json
    MoeConfig c = make("qwen3-30b-a3b", 2048, 768, 128, 8);
    c.num_layers = 48; c.n_heads = 32; c.n_kv_heads = 4; c.head_dim = 128; c.vocab = 151936;
    c.source = "Qwen/Qwen3-30B-A3B config.json";
    v.push_back(c);
  }
  {  // Qwen/Qwen3-235B-A22B config.json
    MoeConfig c = make("qwen3-235b-a22b", 4096, 1536, 128, 8);
    c.num_layers = 94; c.n_heads = 64; c.n_kv_heads = 4; c.head_dim = 128; c.vocab = 151936;
    c.source = "Qwen/Qwen3-235B-A22B config.json";
    v.push_back(c);
  }
  {  // mistralai/Mixtral-8x7B-v0.1 config.json
    MoeConfig c = make("mixtral-8x7b", 4096, 14336, 8, 2);
    c.router = RouterKind::topk_softmax;
    c.num_layers = 32; c.n_heads = 32; c.n_kv_heads = 8; c.head_dim = 128; c.vocab = 32000;
    c.source = "mistralai/Mixtral-8x7B-v0.1 config.json";
    v.push_back(c);
  }
  {  // allenai/OLMoE-1B-7B-0924 config.json
    MoeConfig c = make("olmoe-1b-7b", 2048, 1024, 64, 8);
    c.renormalize = false;
    c.num_layers = 16; c.n_heads = 16; c.n_kv_heads = 16; c.head_dim = 128; c.vocab = 50304;
    c.source = "allenai/OLMoE-1B-7B-0924 config.json (norm_topk_prob false)";
    v.push_back(c);
  }
  {  // openai/gpt-oss-120b config.json
    MoeConfig c = make("gpt-oss-120b", 2880, 2880, 128, 4);
    c.router = RouterKind::topk_softmax; c.activation = Activation::clamped_swiglu;
    c.num_layers = 36; c.n_heads = 64; c.n_kv_heads = 8; c.head_dim = 64; c.vocab = 201088;
    c.source = "openai/gpt-oss-120b config.json (expert biases not modelled)";
    v.push_back(c);
  }
  {  // SonicMoE's fine-grained 7B configuration (arXiv 2512.14080), the chapter's benchmark layer
    MoeConfig c = make("sonic-7b", 1536, 256, 128, 8);
    c.num_layers = 32; c.n_heads = 12; c.n_kv_heads = 12; c.head_dim = 128; c.vocab = 32000;
    c.source = "SonicMoE 7B fine-grained config (d 1536, n 256, E 128, K 8)";
    v.push_back(c);
  }
  // Small layers for tests, examples and the CPU demo.
  {
    MoeConfig c = make("tiny", 64, 32, 8, 2);
    c.source = "test preset";
    v.push_back(c);
  }
  {
    MoeConfig c = make("tiny-deepseek", 128, 64, 32, 4);
    c.num_shared = 1; c.d_shared = 64;
    c.router = RouterKind::sigmoid_group_topk; c.n_groups = 4; c.topk_groups = 2;
    c.routed_scale = 2.5f; c.router_bias = true;
    c.source = "test preset, DeepSeek-V3 routing in miniature";
    v.push_back(c);
  }
  {
    MoeConfig c = make("small", 256, 128, 16, 4);
    c.source = "example preset";
    v.push_back(c);
  }
  {
    MoeConfig c = make("demo", 1024, 256, 64, 8);
    c.source = "CPU demo preset: fine-grained, SonicMoE-like proportions at a CPU-friendly size";
    v.push_back(c);
  }
  return v;
}

}  // namespace

const std::vector<MoeConfig>& presets() {
  static const std::vector<MoeConfig> all = build_presets();
  return all;
}

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const auto& c : presets()) names.push_back(c.name);
  return names;
}

const MoeConfig& preset(std::string_view name) {
  for (const auto& c : presets())
    if (c.name == name) return c;
  std::string list;
  for (const auto& c : presets()) list += (list.empty() ? "" : ", ") + c.name;
  throw InvalidArgument(detail::concat("config = '", name, "': expected one of ", list));
}

MoeConfig preset_variant(std::string_view spec) {
  std::size_t colon = spec.find(':');
  MoeConfig c = preset(spec.substr(0, colon));
  while (colon != std::string_view::npos) {
    const std::size_t next = spec.find(':', colon + 1);
    const std::string_view part = spec.substr(colon + 1, next == std::string_view::npos ? next : next - colon - 1);
    colon = next;
    const bool ok = part.size() > 1 && part.size() < 9 && std::string_view("EKdn").find(part[0]) != std::string_view::npos &&
                    part.find_first_not_of("0123456789", 1) == std::string_view::npos;
    if (!ok)
      throw InvalidArgument(detail::concat("config = '", spec, "': modifier '", part,
                                           "': expected E<experts>, K<top_k>, d<d_model> or n<d_expert>"));
    const int v = std::stoi(std::string(part.substr(1)));
    switch (part[0]) {
      case 'E': c.num_experts = v; break;
      case 'K': c.top_k = v; break;
      case 'd': c.d_model = v; break;
      default: c.d_expert = v; break;
    }
  }
  c.name = std::string(spec);
  c.validate();
  return c;
}

}  // namespace tilemoe
