// tilemoe demo: the chapter's verification checklist, measured on the default device.
// Each item prints [x] (measured and met), [ ] (measured and not met) or [-] (cannot be measured
// here, with the reason). Nothing is ticked without a measurement.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "commands.hpp"
#include "demo_checks.hpp"

namespace tilemoe::tool {

namespace {
const char* mark(CheckStatus s) {
  switch (s) {
    case CheckStatus::pass: return "[x]";
    case CheckStatus::fail: return "[ ]";
    case CheckStatus::unavailable: return "[-]";
  }
  return "[?]";
}
const char* word(CheckStatus s) {
  switch (s) {
    case CheckStatus::pass: return "pass";
    case CheckStatus::fail: return "fail";
    case CheckStatus::unavailable: return "unavailable";
  }
  return "?";
}
}  // namespace

int cmd_demo(int argc, char** argv) {
  Args args("demo",
            "Runs the chapter's verification checklist on the default device (the GPU if there is\n"
            "one, else the CPU): builds a MoE layer from a preset, routes random tokens and measures\n"
            "each item.",
            {{"device", "cpu or cuda", default_device() == Device::cuda ? "cuda" : "cpu"},
             {"config", "preset name", ""},
             {"tokens", "tokens in the batch (0: the device's default)", "0"},
             {"dtype", "fp32 or bf16", "bf16"},
             {"repeats", "timed runs per variant (median)", "3"},
             {"seed", "seed of weights and tokens", "1"},
             {"json", "print JSON instead of the checklist", "", true}});
  if (!args.parse(argc, argv)) return 0;
  DemoSetup s;
  s.device = parse_device(args.get("device"));
  if (s.device == Device::cuda && !cuda_available())
    throw InvalidArgument("--device = cuda: no CUDA GPU is available here (use --device cpu)");
  const bool gpu = s.device == Device::cuda;
  s.cfg = preset_variant(args.get("config").empty() ? (gpu ? "sonic-7b" : "demo") : args.get("config"));
  const long long tokens = args.get_int("tokens");
  check_arg(tokens >= 0 && tokens <= (1ll << 24), "--tokens", tokens, "0 (the device's default) or 1 <= tokens <= 16777216");
  s.tokens = tokens > 0 ? tokens : (gpu ? 24576 : 4096);
  s.dtype = parse_dtype(args.get("dtype"));
  s.repeats = static_cast<int>(args.get_int("repeats"));
  check_arg(s.repeats >= 1 && s.repeats <= 1000, "--repeats", s.repeats, "1 <= repeats <= 1000");
  s.seed = static_cast<std::uint64_t>(args.get_int("seed"));
  s.verbose = !args.has("json");
  check_fits(s.cfg, s.dtype, s.tokens, s.device);

  if (s.verbose)
    std::printf("tilemoe demo: %s on %s (%s), %lld tokens, %s\n\n", s.cfg.name.c_str(), to_string(s.device),
                device_name(s.device).c_str(), static_cast<long long>(s.tokens), to_string(s.dtype));
  std::vector<CheckResult> results = run_demo_checks(s);

  int met = 0, measured = 0;
  for (const auto& r : results) {
    met += r.status == CheckStatus::pass;
    measured += r.status != CheckStatus::unavailable;
  }
  if (!s.verbose) {
    std::printf("{\"config\": \"%s\", \"device\": \"%s\", \"device_name\": \"%s\", \"tokens\": %lld, "
                "\"dtype\": \"%s\", \"checks\": [\n",
                s.cfg.name.c_str(), to_string(s.device), json_escape(device_name(s.device)).c_str(),
                static_cast<long long>(s.tokens), to_string(s.dtype));
    for (std::size_t i = 0; i < results.size(); ++i) {
      const auto& r = results[i];
      std::printf("  {\"item\": \"%s\", \"status\": \"%s\", \"value\": %.6g, \"detail\": \"%s\"}%s\n",
                  json_escape(r.item).c_str(), word(r.status), r.value, json_escape(r.detail).c_str(),
                  i + 1 < results.size() ? "," : "");
    }
    std::printf("]}\n");
  } else {
    std::printf("\nVerification checklist (%s, %s):\n", to_string(s.device), device_name(s.device).c_str());
    for (const auto& r : results) std::printf("  %s %-52s %s\n", mark(r.status), r.item.c_str(), r.detail.c_str());
    std::printf("\n%d of %zu items met, %d measured here. [x] met, [ ] measured and not met, [-] not "
                "measurable here.\n", met, results.size(), measured);
  }
  // The forward's correctness decides the exit code: a wrong result is an error; a speed target
  // not met on this machine is a finding, reported above.
  return results.front().status == CheckStatus::pass ? 0 : 3;
}

}  // namespace tilemoe::tool
