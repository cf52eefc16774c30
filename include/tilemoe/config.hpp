// MoeConfig: the shape of one MoE layer (and of the model around it, for the throughput model),
// with named presets taken from the models' published configs.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tilemoe {

// How router logits become (expert, weight) choices. Ties always break toward the lower
// expert index, on the CPU and the GPU alike.
enum class RouterKind {
  softmax_topk,        // p = softmax(logits); top-k of p; weights p (renormalized if asked)
  topk_softmax,        // top-k of logits; weights = softmax over those k (Mixtral, gpt-oss)
  sigmoid_group_topk,  // DeepSeek-V3 noaux_tc: sigmoid, + correction bias to choose, groups
  top1,                // Switch: softmax, the single best expert, weight = its probability
};

enum class Activation {
  swiglu,          // silu(gate) * up               (w13 holds gate rows then up rows)
  geglu,           // gelu_tanh(gate) * up
  gelu,            // plain MLP: gelu_tanh(h)       (w13 holds n rows)
  relu,            // plain MLP: relu(h)
  clamped_swiglu,  // gpt-oss: g = min(gate, 7), u = clamp(up, -7, 7); g*sigmoid(1.702 g)*(u+1)
};

const char* to_string(RouterKind k);
const char* to_string(Activation a);
RouterKind parse_router_kind(std::string_view s);
Activation parse_activation(std::string_view s);
bool is_gated(Activation a);  // w13 holds 2n rows (gate, up) rather than n

struct RouterConfig {
  RouterKind kind = RouterKind::softmax_topk;
  int num_experts = 8;
  int top_k = 2;
  bool renormalize = true;   // divide the k weights by their sum (softmax_topk, sigmoid)
  int n_groups = 1;          // sigmoid_group_topk: experts split in n_groups equal groups
  int topk_groups = 1;       // ... of which the best topk_groups are kept
  float routed_scale = 1.0f; // weights multiplied by this at the end
  void validate() const;     // throws InvalidArgument naming the field
};

struct MoeConfig {
  std::string name = "custom";
  std::int64_t d_model = 0;    // d, hidden size
  std::int64_t d_expert = 0;   // n, each routed expert's intermediate size
  int num_experts = 0;         // E routed experts
  int top_k = 0;               // K
  int num_shared = 0;          // shared experts, always active, added unweighted
  std::int64_t d_shared = 0;   // each shared expert's intermediate size
  Activation activation = Activation::swiglu;
  RouterKind router = RouterKind::softmax_topk;
  bool renormalize = true;
  int n_groups = 1;
  int topk_groups = 1;
  float routed_scale = 1.0f;
  bool router_bias = false;    // a per-expert correction bias used to choose (DeepSeek-V3)

  // The model around the layer (for the throughput model); 0 where unknown.
  int num_layers = 1;          // transformer blocks
  int num_dense_layers = 0;    // blocks whose FFN is dense, not MoE
  std::int64_t d_dense_ff = 0; // their FFN size
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  std::int64_t vocab = 0;
  std::string source;          // where the figures come from

  RouterConfig router_config() const;
  void validate() const;       // throws InvalidArgument naming the field
  // Multiply-adds of one token through its K routed + shared experts, times 2.
  double flops_per_token() const;
};

// A preset by name ("deepseek-v3", "qwen3-30b-a3b", "tiny", ...); throws InvalidArgument with
// the list of names for an unknown one.
const MoeConfig& preset(std::string_view name);
std::vector<std::string> preset_names();
const std::vector<MoeConfig>& presets();
// A preset with some sizes changed, as benchmarks name their layers: "name[:E<experts>]
// [:K<top_k>][:d<d_model>][:n<d_expert>]", e.g. "sonic-7b:E256:K4" or "sonic-7b:d4096:n512".
// The result is named spec and validated; a bad modifier throws InvalidArgument naming it.
MoeConfig preset_variant(std::string_view spec);

}  // namespace tilemoe
