// tilemoe run: times one MoE layer forward on a preset and prints time, throughput and the
// expert load histogram.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "commands.hpp"

namespace tilemoe::tool {

int cmd_run(int argc, char** argv) {
  Args args("run", "Times one MoE layer forward pass: time, throughput, expert load histogram.",
            {{"config", "preset name (tilemoe configs lists them), optionally with sizes changed: name:E<experts>:K<top_k>:d<d_model>:n<d_expert>", "demo"},
             {"tokens", "tokens in the batch", "4096"},
             {"device", "cpu or cuda", default_device() == Device::cuda ? "cuda" : "cpu"},
             {"algorithm", "sequential, grouped or fused", "grouped"},
             {"dtype", "fp32 or bf16", "bf16"},
             {"router-dtype", "the router weights: fp32 (fp32-accurate logits) or bf16 (as checkpoints store them)", "fp32"},
             {"rounding", "token rounding rule: none, nearest, up, down, stochastic, balanced", "none"},
             {"tile", "token rounding tile size", "128"},
             {"pipeline-stages", "fused on the GPU: load pipeline stages, 0 = the heuristic's, 1 = no overlap", "0"},
             {"stages", "also time each stage (router, metadata, projections, combine)", "", true},
             {"repeats", "timed runs (the median is reported)", "5"},
             {"threads", "CPU threads (0 = all)", "0"},
             {"seed", "seed of weights and tokens", "1"},
             {"json", "print JSON instead of a table", "", true}});
  if (!args.parse(argc, argv)) return 0;
  const MoeConfig cfg = preset_variant(args.get("config"));  // "sonic-7b", "sonic-7b:d4096:n512"
  const long long T = args.get_int("tokens");
  check_arg(T >= 1 && T <= (1ll << 24), "--tokens", T, "1 <= tokens <= 16777216");
  const Device device = parse_device(args.get("device"));
  if (device == Device::cuda && !cuda_available())
    throw InvalidArgument("--device = cuda: no CUDA GPU is available here (use --device cpu)");
  const DType dtype = parse_dtype(args.get("dtype"));
  const DType router_dtype = parse_dtype(args.get("router-dtype"), "--router-dtype");
  ForwardOptions opt;
  opt.algorithm = parse_algorithm(args.get("algorithm"));
  opt.num_threads = static_cast<int>(args.get_int("threads"));
  opt.pipeline_stages = static_cast<int>(args.get_int("pipeline-stages"));
  check_arg(opt.pipeline_stages >= 0 && opt.pipeline_stages <= 4, "--pipeline-stages", opt.pipeline_stages,
            "0 (the heuristic's) or 1..4");
  check_arg(opt.num_threads >= 0, "--threads", opt.num_threads, ">= 0");
  if (args.get("rounding") != "none") {
    RoundingOptions r;
    r.rule = parse_rounding_rule(args.get("rounding"));
    r.tile = static_cast<int>(args.get_int("tile"));
    r.validate();
    opt.rounding = r;
  }
  const int repeats = static_cast<int>(args.get_int("repeats"));
  check_arg(repeats >= 1 && repeats <= 10000, "--repeats", repeats, "1 <= repeats <= 10000");
  const auto seed = static_cast<std::uint64_t>(args.get_int("seed"));
  check_fits(cfg, dtype, T, device);

  const bool json = args.has("json");
  if (!json) std::fprintf(stderr, "building %s (%s) weights...\n", cfg.name.c_str(), to_string(dtype));
  MoeWeights w = random_weights(cfg, dtype, seed);
  if (router_dtype == DType::bf16) w.router = w.router.to(DType::bf16);
  Tensor x = random_tokens(T, cfg.d_model, dtype, seed + 1);
  if (device == Device::cuda) {
    w = w.to(Device::cuda);
    x = x.to(Device::cuda);
  }
  ForwardTrace trace;
  moe_forward(cfg, w, x, opt, &trace);
  const Timing t = time_runs([&] { moe_forward(cfg, w, x, opt); }, repeats, device, "forward");
  // Stage medians over the repeats (a separate, timed pass: stage timing synchronizes).
  std::vector<StageTime> stages;
  if (args.has("stages")) {
    ForwardOptions timed = opt;
    timed.time_stages = true;
    std::vector<std::vector<double>> ms;
    for (int r = 0; r < repeats; ++r) {
      ForwardTrace tr;
      moe_forward(cfg, w, x, timed, &tr);
      if (ms.empty()) ms.resize(tr.stages.size()), stages = tr.stages;
      for (std::size_t i = 0; i < tr.stages.size() && i < ms.size(); ++i) ms[i].push_back(tr.stages[i].ms);
    }
    for (std::size_t i = 0; i < stages.size(); ++i) {
      std::sort(ms[i].begin(), ms[i].end());
      stages[i].ms = ms[i][ms[i].size() / 2];
    }
  }

  const double A = static_cast<double>(trace.routing.num_assignments());
  const double rows = is_gated(cfg.activation) ? 3.0 : 2.0;
  const double flops = 2.0 * rows * cfg.d_model * (A * cfg.d_expert + static_cast<double>(T) * cfg.num_shared * cfg.d_shared);
  const double tflops = flops / (t.median_ms * 1e-3) / 1e12;
  const double tok_s = static_cast<double>(T) / (t.median_ms * 1e-3);
  const auto& counts = trace.counts;
  const std::int64_t cmax = *std::max_element(counts.begin(), counts.end());
  const std::int64_t cmin = *std::min_element(counts.begin(), counts.end());
  const double mean = A / cfg.num_experts;

  if (json) {
    std::printf("{\"config\": \"%s\", \"tokens\": %lld, \"device\": \"%s\", \"device_name\": \"%s\", "
                "\"algorithm\": \"%s\", \"dtype\": \"%s\", \"rounding\": \"%s\", \"repeats\": %d, "
                "\"median_ms\": %.6f, \"min_ms\": %.6f, \"tflops\": %.4f, \"tokens_per_s\": %.1f, "
                "\"assignments\": %.0f, \"path\": \"%s\", \"stages_ms\": {",
                cfg.name.c_str(), T, to_string(device), json_escape(device_name(device)).c_str(),
                to_string(opt.algorithm), to_string(dtype), args.get("rounding").c_str(), repeats,
                t.median_ms, t.min_ms, tflops, tok_s, A, json_escape(trace.path).c_str());
    for (std::size_t i = 0; i < stages.size(); ++i)
      std::printf("%s\"%s\": %.6f", i ? ", " : "", stages[i].name.c_str(), stages[i].ms);
    std::printf("}, \"expert_counts\": [");
    for (std::size_t e = 0; e < counts.size(); ++e) std::printf("%s%lld", e ? ", " : "", (long long)counts[e]);
    std::printf("]}\n");
    return 0;
  }
  std::printf("config     %s (d %lld, n %lld, E %d, K %d, shared %d)\n", cfg.name.c_str(),
              (long long)cfg.d_model, (long long)cfg.d_expert, cfg.num_experts, cfg.top_k, cfg.num_shared);
  std::printf("device     %s (%s)\n", to_string(device), device_name(device).c_str());
  std::printf("run        %lld tokens, %s, %s, rounding %s\n", T, to_string(opt.algorithm), to_string(dtype),
              args.get("rounding").c_str());
  std::printf("kernels    %s\n", trace.path.c_str());
  std::printf("time       %.3f ms median of %d (best %.3f ms)\n", t.median_ms, repeats, t.min_ms);
  if (!stages.empty()) {
    std::printf("stages    ");
    for (const StageTime& s : stages) std::printf(" %s %.3f", s.name.c_str(), s.ms);
    std::printf(" ms (medians)\n");
  }
  std::printf("throughput %.0f tokens/s, %.3f TFLOP/s (%.3g GFLOP per forward)\n", tok_s, tflops, flops / 1e9);
  std::printf("load       %.0f assignments, per expert min %lld, mean %.1f, max %lld (max/min %s)\n", A,
              (long long)cmin, mean, (long long)cmax,
              cmin > 0 ? detail::concat(static_cast<double>(cmax) / cmin).c_str() : "inf");
  // Histogram of per-expert loads in 10 bins between min and max.
  const int bins = 10;
  std::vector<int> hist(bins, 0);
  const double span = std::max<double>(1.0, static_cast<double>(cmax - cmin) + 1);
  for (auto c : counts) hist[std::min(bins - 1, static_cast<int>((c - cmin) * bins / span))]++;
  const int hmax = *std::max_element(hist.begin(), hist.end());
  std::printf("experts by load (tokens per expert -> number of experts):\n");
  for (int b = 0; b < bins; ++b) {
    const double lo = cmin + span * b / bins, hi = cmin + span * (b + 1) / bins;
    const int len = hmax ? 40 * hist[b] / hmax : 0;
    std::printf("  %7.0f - %-7.0f %5d %s\n", lo, hi, hist[b], std::string(len, '#').c_str());
  }
  return 0;
}

}  // namespace tilemoe::tool
