// tilemoe configs: the presets, as a table or JSON.
#include <cstdio>

#include "commands.hpp"
#include "tilemoe/config.hpp"

namespace tilemoe::tool {

int cmd_configs(int argc, char** argv) {
  Args args("configs", "Lists the MoE layer presets (figures from each model's published config).",
            {{"json", "print JSON instead of a table", "", true}});
  if (!args.parse(argc, argv)) return 0;
  const bool json = args.has("json");
  if (json) std::printf("[\n");
  else
    std::printf("%-16s %6s %6s %5s %3s %6s %-15s %-19s %6s\n", "name", "d", "n", "E", "K", "shared",
                "activation", "router", "layers");
  const auto& all = presets();
  for (std::size_t i = 0; i < all.size(); ++i) {
    const MoeConfig& c = all[i];
    if (json) {
      std::printf("  {\"name\": \"%s\", \"d_model\": %lld, \"d_expert\": %lld, \"num_experts\": %d, "
                  "\"top_k\": %d, \"num_shared\": %d, \"d_shared\": %lld, \"activation\": \"%s\", "
                  "\"router\": \"%s\", \"renormalize\": %s, \"n_groups\": %d, \"topk_groups\": %d, "
                  "\"routed_scale\": %g, \"num_layers\": %d, \"source\": \"%s\"}%s\n",
                  c.name.c_str(), (long long)c.d_model, (long long)c.d_expert, c.num_experts, c.top_k,
                  c.num_shared, (long long)c.d_shared, to_string(c.activation), to_string(c.router),
                  c.renormalize ? "true" : "false", c.n_groups, c.topk_groups, c.routed_scale,
                  c.num_layers, json_escape(c.source).c_str(), i + 1 < all.size() ? "," : "");
    } else {
      std::printf("%-16s %6lld %6lld %5d %3d %6d %-15s %-19s %6d\n", c.name.c_str(), (long long)c.d_model,
                  (long long)c.d_expert, c.num_experts, c.top_k, c.num_shared, to_string(c.activation),
                  to_string(c.router), c.num_layers);
    }
  }
  if (json) std::printf("]\n");
  return 0;
}

}  // namespace tilemoe::tool
