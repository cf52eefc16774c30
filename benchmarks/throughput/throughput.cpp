// throughput: the analytical performance model of the chapter's step 4. For a model (preset or
// file), a card (preset or file), a number of GPUs and a layout, it predicts per MoE layer the
// FLOPs, bytes, all-to-all traffic, time and bound, and for the whole model tokens/s,
// tokens/day and memory per GPU, for each expert-algorithm variant. --compare puts the model's
// one-layer prediction next to bench_moe_variants' measurements. Everything it prints without
// --compare is a prediction (see docs/throughput.md).
#include <algorithm>
#include <cmath>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "perf/stage_model.hpp"  // internal: variant_for_bench
#include "tilemoe/error.hpp"
#include "tilemoe/perf_model.hpp"

using namespace tilemoe;
using namespace tilemoe::perf;

namespace {

struct Option {
  const char* name;
  const char* value;  // nullptr for a flag
  const char* help;
};

const std::vector<Option> kOptions = {
    {"config", "NAME|FILE", "model preset or config file (key = value or JSON)"},
    {"hardware", "NAME|FILE", "h100, h100-pcie, h200, a100, b200 or a hardware file (default h100)"},
    {"num-gpus", "N", "GPUs in the cluster (default 8)"},
    {"ep", "N", "expert-parallel degree, divides num-gpus and the experts (default gcd)"},
    {"mode", "MODE", "prefill, decode or training (default prefill)"},
    {"batch-tokens", "T", "tokens per GPU per step; decode: sequences per GPU (default 8192 "
                          "prefill, 4096 training, 64 decode)"},
    {"seq-len", "S", "context length (default 4096)"},
    {"zero", "STAGE", "training: ZeRO stage 0-3 over each parameter's data-parallel group (default 1)"},
    {"recompute", nullptr, "training: activation checkpointing (keep layer inputs, recompute)"},
    {"imbalance", "F", "busiest / mean routed rows per GPU (default 1: balanced experts)"},
    {"precision", "P", "bf16 or fp8 weights and GEMMs (default bf16)"},
    {"efficiency", "SRC", "variant efficiencies: defaults, chapter or a bench_moe_variants JSON"},
    {"json", nullptr, "print JSON instead of the table"},
    {"svg", "PATH", "write a chart of tokens/day per variant"},
    {"compare", "JSON", "benchmark mode: predicted vs measured ms for each result in the file"},
    {"allow-overflow", nullptr, "print the prediction even where memory does not fit"},
};

void print_help() {
  std::printf(
      "usage: throughput --config NAME|FILE [--hardware NAME|FILE] [--num-gpus N] [options]\n\n"
      "Predicts the cost of an MoE model on a GPU cluster from first principles and measured\n"
      "ceilings (achievable, not peak, rates). Example (the chapter's step 4):\n"
      "  throughput --config deepseek-v3 --hardware h100 --num-gpus 8\n\noptions:\n");
  for (const auto& o : kOptions) {
    std::string left = std::string("--") + o.name + (o.value ? std::string(" ") + o.value : "");
    std::printf("  %-26s %s\n", left.c_str(), o.help);
  }
  std::printf("  %-26s %s\n\nconfigs:", "--help", "show this help");
  for (const auto& n : preset_names()) std::printf(" %s", n.c_str());
  std::printf("\nhardware:");
  for (const auto& n : hardware_names()) std::printf(" %s", n.c_str());
  std::printf("\n");
}

// Returns false after --help.
bool parse_args(int argc, char** argv, std::map<std::string, std::string>& out) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      print_help();
      return false;
    }
    if (a.rfind("--", 0) != 0)
      throw InvalidArgument(detail::concat("argument '", a, "': expected an option starting with --"));
    a = a.substr(2);
    std::string value;
    bool has_value = false;
    if (auto eq = a.find('='); eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
      has_value = true;
    }
    const Option* opt = nullptr;
    for (const auto& o : kOptions)
      if (a == o.name) opt = &o;
    if (!opt) {
      std::string list;
      for (const auto& o : kOptions) list += (list.empty() ? "--" : ", --") + std::string(o.name);
      throw InvalidArgument(detail::concat("option --", a, ": unknown (expected one of ", list, ", --help)"));
    }
    if (!opt->value) {
      out[a] = std::string(1, '1');  // not = "1": GCC 12 -Wrestrict false positive (PR 105329)
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argc) throw InvalidArgument(detail::concat("option --", a, ": expected a value"));
      value = argv[++i];
    }
    out[a] = value;
  }
  return true;
}

long long to_int(const std::string& name, const std::string& v) {
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0)
    throw InvalidArgument(detail::concat("--", name, " = '", v, "': expected an integer",
                                         errno == ERANGE ? " (out of range)" : ""));
  return x;
}

std::string fmt(const char* f, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, x);
  return buf;
}

std::string si(double x, const char* unit) {  // 1.23 T, 456.7 G ...
  const char* p[] = {"", "K", "M", "G", "T", "P", "E"};
  int i = 0;
  while (std::fabs(x) >= 1000 && i < 6) { x /= 1000; ++i; }
  return fmt("%.2f ", x) + p[i] + unit;
}

std::string json_str(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if (c == '\n') { o += "\\n"; continue; }
    o += c;
  }
  return o + "\"";
}

struct Run {
  ModelSpec model;
  Hardware hw;
  Layout layout;
  Workload work;
  std::vector<Variant> variants;
  std::string efficiency_source;
  std::vector<ModelCost> costs;
};

std::vector<Variant> load_variants(const std::string& src, const Hardware& hw, const std::string& config,
                                   std::string& described) {
  if (src.empty() || src == "defaults") {
    described = "documented defaults (our GPU library's kernels, stage model; docs/throughput.md)";
    return default_variants();
  }
  if (src == "chapter") {
    described = "the chapter's assumptions (0.45 -> 0.78 -> x1.15)";
    return chapter_variants();
  }
  const BenchFile b = read_bench_json(src);
  described = detail::concat("measured where ", src, " has the variant (card ", b.card.empty() ? "?" : b.card,
                             ", ", b.date.empty() ? "date ?" : b.date, "), defaults elsewhere");
  return variants_from_bench(b, hw, config, default_variants());
}

// What fits instead: more GPUs, fp8 weights (inference), or a bigger card.
std::string suggestion(const Run& r, const Variant& v) {
  std::string s;
  std::vector<Hardware> cards = {r.hw};
  for (const char* other : {"h200", "b200"})
    if (r.hw.name != other) cards.push_back(load_hardware(other));
  for (const auto& h : cards) {
    std::vector<Precision> precisions = {r.work.precision};
    if (r.work.precision == Precision::bf16 && h.fp8_tflops > 0 && r.work.mode != Mode::training)
      precisions.push_back(Precision::fp8);
    for (Precision p : precisions) {
      Workload w = r.work;
      w.precision = p;
      const int g = smallest_fitting_num_gpus(r.model, h, w, v, r.layout.zero_stage);
      if (g > 0)
        s += detail::concat(s.empty() ? "; what fits: " : ", ", g, " x ", h.name, " ", to_string(p), " (ep ",
                            default_ep(g, r.model.moe.num_experts), ")");
    }
  }
  return s;
}

void print_table(const Run& r) {
  const MoeConfig& c = r.model.moe;
  const ParamCount pc = count_params(r.model);
  std::printf("throughput: %s on %d x %s (EP %d, DP %d), %s, %lld %s/GPU, seq %lld, %s\n", c.name.c_str(),
              r.layout.num_gpus, r.hw.description.c_str(), r.layout.ep, r.layout.dp(), to_string(r.work.mode),
              static_cast<long long>(r.work.tokens_per_gpu), r.work.mode == Mode::decode ? "sequences" : "tokens",
              static_cast<long long>(r.work.seq_len), to_string(r.work.precision));
  if (r.work.imbalance != 1.0)
    std::printf("  load imbalance %.2f: the busiest GPU gets %.2fx the mean routed rows\n", r.work.imbalance,
                r.work.imbalance);
  std::printf("  model: d %lld, n %lld, E %d, K %d, shared %d x %lld, %d layers (%d dense, d_ff %lld), "
              "attention %s %d x %d, vocab %lld\n",
              static_cast<long long>(c.d_model), static_cast<long long>(c.d_expert), c.num_experts, c.top_k,
              c.num_shared, static_cast<long long>(c.d_shared), c.num_layers, c.num_dense_layers,
              static_cast<long long>(c.d_dense_ff), r.model.mla.enabled() ? "MLA" : "MHA/GQA", c.n_heads,
              c.head_dim, static_cast<long long>(c.vocab));
  std::printf("  params: %s total (experts %s, rest %s), %s active per token\n", si(pc.total(), "").c_str(),
              si(pc.experts, "").c_str(), si(pc.replicated, "").c_str(), si(pc.active_per_token, "").c_str());
  const bool fp8 = r.work.precision == Precision::fp8;
  std::printf("  rates: ACHIEVABLE, not peak: %.0f TFLOP/s %s (peak %.0f), %.2f TB/s HBM (peak %.2f), "
              "NVLink %.0f GB/s per direction x %.2f, network %.0f GB/s x %.2f\n",
              fp8 ? r.hw.achievable_fp8_tflops() : r.hw.achievable_bf16_tflops, to_string(r.work.precision),
              fp8 ? r.hw.fp8_tflops : r.hw.bf16_tflops, r.hw.achievable_hbm_tbps, r.hw.hbm_tbps,
              r.hw.nvlink_gbps / 2, r.hw.comm_efficiency, r.hw.network_gbps, r.hw.comm_efficiency);
  std::printf("         (%s)\n", r.hw.achievable_source.c_str());
  std::printf("  efficiencies: %s\n", r.efficiency_source.c_str());
  std::printf("  ALL FIGURES BELOW ARE MODEL PREDICTIONS, not measurements.\n\n");

  const LayerCost& l0 = r.costs.front().moe_layer;
  std::printf("One MoE layer on one GPU (%s):\n", r.work.mode == Mode::training ? "forward + backward" : "forward");
  std::printf("  FLOPs          %s (routed %s, shared %s, router %s)\n", si(l0.flops, "FLOP").c_str(),
              si(l0.flops_routed, "FLOP").c_str(), si(l0.flops_shared, "FLOP").c_str(),
              si(l0.flops_router, "FLOP").c_str());
  std::printf("  weight bytes   %s (local experts with tokens, shared, router)\n", si(l0.weight_bytes, "B").c_str());
  for (const auto& mc : r.costs)
    if (mc.variant.fused_io) {
      std::printf("  act. bytes     %s unfused, %s fused (HBM traffic)\n", si(l0.act_bytes, "B").c_str(),
                  si(mc.moe_layer.act_bytes, "B").c_str());
      break;
    }
  std::printf("  all-to-all     dispatch %s + combine %s sent per GPU\n", si(l0.dispatch_bytes, "B").c_str(),
              si(l0.combine_bytes, "B").c_str());
  std::printf("  intensity      %.0f FLOP/byte of HBM traffic (ridge %.0f)\n\n",
              l0.flops / (l0.weight_bytes + l0.act_bytes),
              (fp8 ? r.hw.achievable_fp8_tflops() : r.hw.achievable_bf16_tflops) * 1e12 / (r.hw.achievable_hbm_tbps * 1e12));

  std::printf("%-28s %5s %8s %8s %8s %9s %8s %9s %9s %11s %10s %7s %9s %9s %s\n", "variant", "eff", "comp ms",
              "mem ms", "net ms", "MoE ms", "bound", "block ms", "step ms", "tokens/s", "tokens/day", "speedup",
              "act/layer", "mem/GPU", "fits");
  const double base = r.costs.front().tokens_per_day;
  for (const auto& mc : r.costs) {
    const LayerCost& l = mc.moe_layer;
    std::printf("%-28s %5.3f %8.3f %8.3f %8.3f %9.3f %8s %9.3f %9.1f %11s %10s %6.2fx %7.2f GB %6.1f GB %s\n",
                mc.variant.name.c_str(), mc.variant.efficiency, l.t_compute * 1e3, l.t_memory * 1e3,
                l.t_network * 1e3, l.t_total * 1e3, to_string(l.bound), mc.t_block * 1e3, mc.t_step * 1e3,
                si(mc.tokens_per_second, "").c_str(), (fmt("%.1f", mc.tokens_per_day / 1e9) + "B").c_str(),
                mc.tokens_per_day / base, mc.moe_activation_bytes_per_layer / 1e9, mc.memory.total() / 1e9,
                mc.fits() ? "yes" : "NO");
  }
  // Rounding to 128-row tiles changes the computation where experts get few rows: nearest
  // rounding drops an expert's 1..64 rows. Say how many routed rows the rounded variants compute.
  for (const auto& mc : r.costs) {
    const KernelModel* km = kernel_model(mc.variant);
    if (!km || !km->rounding) continue;
    const double feed = static_cast<double>(r.work.tokens_per_gpu) * r.layout.ep * r.work.imbalance;
    const double rows = static_cast<double>(r.work.tokens_per_gpu) * c.top_k * r.work.imbalance;
    const double kept = static_cast<double>(c.num_experts) / r.layout.ep *
                        expected_rounded_tiles(feed, c.top_k, c.num_experts) * kTileRows / rows;
    if (std::fabs(kept - 1) > 0.05)
      std::printf("note: %s computes %.0f%% of the routed rows (%.1f rows per local expert, rounded to 128-row "
                  "tiles: 1..64 rows are dropped): not the same computation\n",
                  mc.variant.name.c_str(), 100 * kept, rows / (static_cast<double>(c.num_experts) / r.layout.ep));
  }
  std::printf("\nvariant efficiency sources:\n");
  for (const auto& v : r.variants) std::printf("  %-28s %s\n", v.name.c_str(), v.source.c_str());

  // The chapter's end point: the fused variant (every list has one).
  const ModelCost* fused = &r.costs.back();
  for (const auto& mc : r.costs)
    if (mc.variant.name == "fused") fused = &mc;
  const ModelCost& best = *fused;
  const MemoryUse& m = best.memory;
  std::printf("\nmemory per GPU (%s): weights %.1f GB, gradients %.1f GB, optimizer %.1f GB, activations %.1f GB, "
              "KV cache %.1f GB = %.1f GB of %.0f GB\n",
              best.variant.name.c_str(), m.weights / 1e9, m.gradients / 1e9, m.optimizer / 1e9,
              m.activations / 1e9, m.kv_cache / 1e9, m.total() / 1e9, best.capacity / 1e9);
  const std::string problem = fit_problem(best, r.hw);
  if (!problem.empty()) std::printf("DOES NOT FIT: %s%s\n", problem.c_str(), suggestion(r, best.variant).c_str());

  std::printf("\nchapter targets (DeepSeek-V3.2: < 25 ms/layer, < 25 GB, > 2000 tok/s), %s:\n",
              best.variant.name.c_str());
  std::printf("  latency per layer (attention + MoE): %.2f ms -> %s\n", best.t_block * 1e3,
              best.t_block < 25e-3 ? "met" : "missed");
  std::printf("  MoE activation memory per layer: %.2f GB -> %s; memory per GPU %.1f GB -> %s\n",
              best.moe_activation_bytes_per_layer / 1e9, best.moe_activation_bytes_per_layer < 25e9 ? "met" : "missed",
              m.total() / 1e9, m.total() < 25e9 ? "met" : "missed");
  std::printf("  throughput: %.0f tokens/s on %d GPUs -> %s\n", best.tokens_per_second, r.layout.num_gpus,
              best.tokens_per_second > 2000 ? "met" : "missed");
  const double peak = (fp8 ? r.hw.fp8_tflops : r.hw.bf16_tflops) * 1e12;
  const double flops_per_token = best.flops_per_step_gpu / r.work.tokens_per_gpu;
  std::printf("  ceiling: %.1f GFLOP per token (%s) -> at 100%% of the %s peak at most %.1fB tokens/day on %d GPUs\n",
              flops_per_token / 1e9,
              r.work.mode != Mode::training ? "forward" : r.work.recompute ? "forward + backward + recompute" : "forward + backward",
              to_string(r.work.precision), tokens_per_day(r.layout.num_gpus * peak / flops_per_token) / 1e9,
              r.layout.num_gpus);
  std::printf("  tokens/day: %.1fB (%s) vs %.1fB (%s), %.2fx (chapter: 186B vs 100B, 1.86x)\n",
              best.tokens_per_day / 1e9, best.variant.name.c_str(), base / 1e9,
              r.costs.front().variant.name.c_str(), best.tokens_per_day / base);
}

void print_json(const Run& r) {
  const MoeConfig& c = r.model.moe;
  const ParamCount pc = count_params(r.model);
  std::printf("{\n  \"kind\": \"prediction\",\n  \"config\": %s,\n  \"hardware\": %s,\n", json_str(c.name).c_str(),
              json_str(r.hw.name).c_str());
  std::printf("  \"num_gpus\": %d, \"ep\": %d, \"dp\": %d,\n  \"mode\": %s, \"tokens_per_gpu\": %lld, "
              "\"seq_len\": %lld, \"precision\": %s,\n",
              r.layout.num_gpus, r.layout.ep, r.layout.dp(), json_str(to_string(r.work.mode)).c_str(),
              static_cast<long long>(r.work.tokens_per_gpu), static_cast<long long>(r.work.seq_len),
              json_str(to_string(r.work.precision)).c_str());
  std::printf("  \"achievable_bf16_tflops\": %.6g, \"achievable_hbm_tbps\": %.6g, \"achievable_source\": %s,\n",
              r.hw.achievable_bf16_tflops, r.hw.achievable_hbm_tbps, json_str(r.hw.achievable_source).c_str());
  std::printf("  \"params_total\": %.6g, \"params_experts\": %.6g, \"params_active_per_token\": %.6g,\n",
              pc.total(), pc.experts, pc.active_per_token);
  std::printf("  \"efficiency_source\": %s,\n  \"variants\": [\n", json_str(r.efficiency_source).c_str());
  for (size_t i = 0; i < r.costs.size(); ++i) {
    const ModelCost& mc = r.costs[i];
    const LayerCost& l = mc.moe_layer;
    std::printf("    {\"variant\": %s, \"efficiency\": %.6g, \"measured\": %s, \"source\": %s,\n",
                json_str(mc.variant.name).c_str(), mc.variant.efficiency, mc.variant.measured ? "true" : "false",
                json_str(mc.variant.source).c_str());
    std::printf("     \"moe_layer\": {\"flops\": %.6g, \"weight_bytes\": %.6g, \"act_bytes\": %.6g, "
                "\"dispatch_bytes\": %.6g, \"combine_bytes\": %.6g, \"t_compute_ms\": %.6g, \"t_memory_ms\": %.6g, "
                "\"t_network_ms\": %.6g, \"t_total_ms\": %.6g, \"bound\": %s},\n",
                l.flops, l.weight_bytes, l.act_bytes, l.dispatch_bytes, l.combine_bytes, l.t_compute * 1e3,
                l.t_memory * 1e3, l.t_network * 1e3, l.t_total * 1e3, json_str(to_string(l.bound)).c_str());
    std::printf("     \"t_attention_ms\": %.6g, \"t_block_ms\": %.6g, \"t_step_ms\": %.6g, \"t_grad_sync_ms\": %.6g, "
                "\"tokens_per_second\": %.6g, \"tokens_per_day\": %.6g, \"speedup\": %.6g,\n",
                mc.t_attention * 1e3, mc.t_block * 1e3, mc.t_step * 1e3, mc.t_grad_sync * 1e3, mc.tokens_per_second,
                mc.tokens_per_day, mc.tokens_per_day / r.costs.front().tokens_per_day);
    std::printf("     \"memory_gb\": {\"weights\": %.6g, \"gradients\": %.6g, \"optimizer\": %.6g, "
                "\"activations\": %.6g, \"kv_cache\": %.6g, \"total\": %.6g, \"capacity\": %.6g}, "
                "\"moe_activation_gb_per_layer\": %.6g, \"fits\": %s, \"fit_problem\": %s}%s\n",
                mc.memory.weights / 1e9, mc.memory.gradients / 1e9, mc.memory.optimizer / 1e9,
                mc.memory.activations / 1e9, mc.memory.kv_cache / 1e9, mc.memory.total() / 1e9, mc.capacity / 1e9,
                mc.moe_activation_bytes_per_layer / 1e9, mc.fits() ? "true" : "false",
                json_str(fit_problem(mc, r.hw)).c_str(), i + 1 < r.costs.size() ? "," : "");
  }
  std::printf("  ]\n}\n");
}

std::string xml(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

void write_svg(const Run& r, const std::string& path) {
  const int bar_h = 26, gap = 10, left = 230, width = 820, top = 60;
  const int h = top + static_cast<int>(r.costs.size()) * (bar_h + gap) + 40;
  double maxv = 0;
  for (const auto& mc : r.costs) maxv = std::max(maxv, mc.tokens_per_day);
  std::ofstream o(path);
  if (!o) throw InvalidArgument(detail::concat("--svg = '", path, "': cannot be written"));
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << h
    << "\" font-family=\"sans-serif\" font-size=\"13\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o << "<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">Predicted tokens/day: " << xml(r.model.moe.name)
    << ", " << r.layout.num_gpus << " x " << xml(r.hw.description) << ", " << to_string(r.work.mode) << "</text>\n";
  o << "<text x=\"10\" y=\"42\" fill=\"#555\">model prediction at achievable rates (EP " << r.layout.ep
    << ", " << r.work.tokens_per_gpu << " tokens/GPU, " << to_string(r.work.precision)
    << "); speedup over " << xml(r.costs.front().variant.name) << "</text>\n";
  const double base = r.costs.front().tokens_per_day;
  for (size_t i = 0; i < r.costs.size(); ++i) {
    const ModelCost& mc = r.costs[i];
    const int y = top + static_cast<int>(i) * (bar_h + gap);
    const double w = (width - left - 150) * (maxv > 0 ? mc.tokens_per_day / maxv : 0);
    o << "<text x=\"" << left - 8 << "\" y=\"" << y + 18 << "\" text-anchor=\"end\">" << xml(mc.variant.name)
      << (mc.variant.measured ? " (measured eff.)" : "") << "</text>\n";
    o << "<rect x=\"" << left << "\" y=\"" << y << "\" width=\"" << fmt("%.1f", w) << "\" height=\"" << bar_h
      << "\" fill=\"" << (mc.fits() ? "#4878d0" : "#d65f5f") << "\"/>\n";
    o << "<text x=\"" << fmt("%.1f", left + w + 6) << "\" y=\"" << y + 18 << "\">"
      << fmt("%.1f", mc.tokens_per_day / 1e9) << "B (" << fmt("%.2f", mc.tokens_per_day / base) << "x)"
      << (mc.fits() ? "" : " does not fit") << "</text>\n";
  }
  o << "</svg>\n";
}

// Benchmark mode: predict each measured (config, tokens, variant) for one layer on one GPU.
int run_compare(const std::map<std::string, std::string>& a) {
  const std::string path = a.at("compare");
  const BenchFile b = read_bench_json(path);
  const Hardware hw = load_hardware(a.count("hardware") ? a.at("hardware") : "h100");
  const std::string eff = a.count("efficiency") ? a.at("efficiency") : "defaults";
  std::printf("compare: %s (card %s, date %s, commit %s) against the model on %s\n", path.c_str(),
              b.card.empty() ? "?" : b.card.c_str(), b.date.empty() ? "?" : b.date.c_str(),
              b.commit.empty() ? "?" : b.commit.c_str(), hw.description.c_str());
  if (eff == path)
    std::printf("warning: --efficiency is the compared file itself, so compute-bound rows agree by "
                "construction\n");
  std::printf("one MoE layer, forward, EP 1, at achievable rates; efficiencies: %s\n\n", eff.c_str());
  std::printf("%-16s %8s %-18s %-28s %10s %10s %8s %8s\n", "config", "tokens", "variant", "model variant",
              "predicted", "measured", "gap %", "bound");
  double sum_abs = 0;
  int n = 0;
  std::vector<std::pair<std::string, std::pair<double, int>>> per_variant;  // bench name: sum |gap|, rows
  for (const auto& r : b.results) {
    const ModelSpec m = load_model(r.config);
    std::string described;
    const std::vector<Variant> vs = load_variants(eff, hw, m.moe.name, described);
    const Variant* v = variant_for_bench(r.variant, vs);
    if (!v) {
      std::printf("%-16s %8lld %-18s %-28s %10s %7.3f ms\n", r.config.c_str(), static_cast<long long>(r.tokens),
                  r.variant.c_str(), "-", "no model", r.ms);
      continue;
    }
    Workload w;
    w.mode = Mode::prefill;
    w.tokens_per_gpu = r.tokens;
    const LayerCost l = moe_layer_cost(m, hw, Layout{1, 1}, w, *v);
    const double pred = l.t_total * 1e3, gap = (pred - r.ms) / r.ms * 100;
    sum_abs += std::fabs(gap);
    ++n;
    auto it = std::find_if(per_variant.begin(), per_variant.end(), [&](const auto& p) { return p.first == r.variant; });
    if (it == per_variant.end()) it = per_variant.insert(per_variant.end(), {r.variant, {0.0, 0}});
    it->second.first += std::fabs(gap);
    ++it->second.second;
    std::printf("%-16s %8lld %-18s %-28s %7.3f ms %7.3f ms %+7.1f%% %8s\n", r.config.c_str(),
                static_cast<long long>(r.tokens), r.variant.c_str(), v->name == r.variant ? "=" : v->name.c_str(),
                pred, r.ms, gap, to_string(l.bound));
  }
  if (n > 0) {
    std::printf("\nmean |gap| %.1f%% over %d rows (aim: within 15%%); by variant:", sum_abs / n, n);
    for (const auto& [name, acc] : per_variant)
      std::printf(" %s %.1f%% (%d)%s", name.c_str(), acc.first / acc.second, acc.second,
                  &name == &per_variant.back().first ? "\n" : ",");
  }
  return 0;
}

int run(int argc, char** argv) {
  std::map<std::string, std::string> a;
  if (!parse_args(argc, argv, a)) return 0;
  if (a.count("compare")) return run_compare(a);
  if (!a.count("config"))
    throw InvalidArgument("--config: missing (expected a preset name or a config file; see --help)");

  Run r;
  r.model = load_model(a.at("config"));
  r.hw = load_hardware(a.count("hardware") ? a.at("hardware") : "h100");
  r.layout.num_gpus = static_cast<int>(a.count("num-gpus") ? to_int("num-gpus", a.at("num-gpus")) : 8);
  check_arg(r.layout.num_gpus >= 1 && r.layout.num_gpus <= (1 << 20), "--num-gpus", r.layout.num_gpus,
            "1 <= num-gpus <= 2^20");
  r.layout.ep = a.count("ep") ? static_cast<int>(to_int("ep", a.at("ep")))
                              : default_ep(r.layout.num_gpus, r.model.moe.num_experts);
  if (a.count("zero")) r.layout.zero_stage = static_cast<int>(to_int("zero", a.at("zero")));
  validate_layout(r.layout, r.model.moe);
  r.work.mode = parse_mode(a.count("mode") ? a.at("mode") : "prefill");
  r.work.tokens_per_gpu = r.work.mode == Mode::decode ? 64 : r.work.mode == Mode::training ? 4096 : 8192;
  if (a.count("batch-tokens")) r.work.tokens_per_gpu = to_int("batch-tokens", a.at("batch-tokens"));
  if (a.count("seq-len")) r.work.seq_len = to_int("seq-len", a.at("seq-len"));
  if (a.count("imbalance")) {
    char* end = nullptr;
    const std::string& v = a.at("imbalance");
    r.work.imbalance = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0') throw InvalidArgument("--imbalance = '" + v + "': expected a number");
  }
  r.work.recompute = a.count("recompute") > 0;
  check_arg(!r.work.recompute || r.work.mode == Mode::training, "--recompute", "set", "only with --mode training");
  if (a.count("precision")) r.work.precision = parse_precision(a.at("precision"));
  r.work.validate();
  r.variants = load_variants(a.count("efficiency") ? a.at("efficiency") : "", r.hw, r.model.moe.name,
                             r.efficiency_source);
  for (const auto& v : r.variants) r.costs.push_back(model_cost(r.model, r.hw, r.layout, r.work, v));

  // The layout must fit with the leanest variant (fused); otherwise say by how much and what fits.
  const ModelCost* lean = &r.costs.front();
  for (const auto& mc : r.costs)
    if (mc.memory.total() < lean->memory.total()) lean = &mc;
  if (!lean->fits() && !a.count("allow-overflow"))
    throw InvalidArgument(fit_problem(*lean, r.hw) + suggestion(r, lean->variant) +
                          " (--allow-overflow prints the prediction anyway)");

  if (a.count("json")) print_json(r);
  else print_table(r);
  if (a.count("svg")) {
    write_svg(r, a.at("svg"));
    if (!a.count("json")) std::printf("\nwrote %s\n", a.at("svg").c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const tilemoe::Error& e) {
    std::fprintf(stderr, "throughput: error: %s\n", e.what());
    return 1;
  }
}
