// Step 3 of the chapter: tile-aware token rounding, expert by expert. Routes T tokens through a
// preset's router, rounds each expert's token count to a multiple of the tile M and prints, per
// expert, the count, the tiles it needs and their utilization before and after, with totals and
// how far the layer output moves. Usage: token_rounding --help
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>

#include "tilemoe/tilemoe.hpp"

using namespace tilemoe;

namespace {

struct Args {
  std::string preset = "small";
  std::int64_t tokens = 2048;
  int tile = 128;
  std::string rule = "nearest";
  std::uint64_t seed = 1;
};

void usage() {
  std::printf(
      "token_rounding: per-expert token counts before and after tile-aware rounding\n"
      "  --preset NAME   MoE layer preset (default small: d 256, n 128, E 16, K 4)\n"
      "  --tokens T      tokens routed (default 2048)\n"
      "  --tile M        tile size, a power of two (default 128)\n"
      "  --rule R        nearest | up | down | stochastic | balanced (default nearest)\n"
      "  --seed S        seed of weights, tokens and the stochastic rule (default 1)\n");
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string_view f = argv[i];
    if (f == "--help" || f == "-h") { usage(); std::exit(0); }
    if (i + 1 >= argc) throw InvalidArgument(std::string(f) + ": expected a value after it (see --help)");
    const char* v = argv[++i];
    if (f == "--preset") a.preset = v;
    else if (f == "--tokens") a.tokens = parse_int(f, v, 1, 1ll << 24);
    else if (f == "--tile") a.tile = static_cast<int>(parse_int(f, v, 1, 1 << 20));
    else if (f == "--rule") a.rule = v;
    else if (f == "--seed") a.seed = static_cast<std::uint64_t>(parse_int(f, v, 0, LLONG_MAX));
    else throw InvalidArgument("unknown flag " + std::string(f) + " (see --help)");
  }
  return a;
}

int tiles(std::int64_t c, int m) { return static_cast<int>((c + m - 1) / m); }
double util(std::int64_t c, int m) { return c == 0 ? 1.0 : static_cast<double>(c) / (tiles(c, m) * m); }

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse(argc, argv);
  RoundingOptions opt;
  opt.tile = a.tile;
  opt.rule = parse_rounding_rule(a.rule);
  opt.seed = a.seed;
  opt.validate();
  const int M = opt.tile;

  // 1. The chapter's example: one expert with 142 tokens, rounded down ((142 // M) * M).
  if (M == 128) {
    RoundingOptions down = opt;
    down.rule = RoundingRule::down;
    const std::vector<std::int64_t> before = {142};
    const auto after = rounding_targets(before, 142, down);
    std::printf("The chapter's example (M = %d, rule down):\n", M);
    std::printf("  before: %lld tokens -> %d tiles, %.1f%% utilization\n", static_cast<long long>(before[0]),
                tiles(before[0], M), 100 * tile_utilization(before, M));
    std::printf("  after:  %lld tokens -> %d tile,  %.1f%% utilization\n\n", static_cast<long long>(after[0]),
                tiles(after[0], M), 100 * tile_utilization(after, M));
  }

  // 2. A whole layer: route T tokens, round, compare.
  const MoeConfig& cfg = preset(a.preset);
  const MoeWeights w = random_weights(cfg, DType::f32, a.seed);
  const Tensor x = random_tokens(a.tokens, cfg.d_model, DType::f32, a.seed + 1);
  RoundingMetrics m;
  const double dev = rounding_output_deviation(cfg, w, x, opt, &m);
  std::printf("Preset %s (E %d, K %d), %lld tokens, tile %d, rule %s\n", cfg.name.c_str(), cfg.num_experts,
              cfg.top_k, static_cast<long long>(a.tokens), M, to_string(opt.rule));
  std::printf("%6s | %-20s | %-20s |\n", "", "top-k", "rounded");
  std::printf("%6s | %7s %5s %6s | %7s %5s %6s | %7s\n", "expert", "tokens", "tiles", "util", "tokens",
              "tiles", "util", "change");
  for (int e = 0; e < cfg.num_experts; ++e) {
    const auto b = m.counts_before[e], c = m.counts_after[e];
    std::printf("%6d | %7lld %5d %5.1f%% | %7lld %5d %5.1f%% | %+7lld\n", e, static_cast<long long>(b), tiles(b, M),
                100 * util(b, M), static_cast<long long>(c), tiles(c, M), 100 * util(c, M),
                static_cast<long long>(c - b));
  }
  int tb = 0, ta = 0;
  for (int e = 0; e < cfg.num_experts; ++e) { tb += tiles(m.counts_before[e], M); ta += tiles(m.counts_after[e], M); }
  std::printf("%6s | %7lld %5d %5.1f%% | %7lld %5d %5.1f%% | %+7lld\n", "total",
              static_cast<long long>(m.assignments_before), tb, 100 * m.utilization_before,
              static_cast<long long>(m.assignments_after), ta, 100 * m.utilization_after,
              static_cast<long long>(m.assignments_after - m.assignments_before));
  std::printf("\npadded rows %lld -> %lld; assignments dropped %lld, added %lld; tokens whose experts changed "
              "%.1f%%;\nexpert load after rounding max %lld / min %lld; layer output deviation from top-k %.4f "
              "(relative L2)\n",
              static_cast<long long>(m.padded_rows_before), static_cast<long long>(m.padded_rows_after),
              static_cast<long long>(m.dropped), static_cast<long long>(m.added), 100 * m.tokens_changed,
              static_cast<long long>(m.max_load), static_cast<long long>(m.min_load), dev);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "token_rounding: %s\n", e.what());
  return 1;
}
