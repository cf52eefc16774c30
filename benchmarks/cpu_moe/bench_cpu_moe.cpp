// CPU benchmark: the MoE layer forward, sequential against grouped, on several presets and token
// counts, each next to a plain OpenBLAS GEMM pair with the same FLOPs timed in the same run
// (the upper bound). Prints Google Benchmark's lines, then a summary table of the medians over
// repetitions; writes JSON.
//   bench_cpu_moe [--configs demo,olmoe-1b-7b] [--tokens 1024,4096] [--dtype fp32]
//                 [--json bench_cpu_moe.json] [Google Benchmark flags]
// On a shared machine, --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true
// spreads each case's runs over the same stretch of time, so that the ratios compare like with like.
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>
#include <sstream>
#include <thread>
#include <string>
#include <vector>

#include "tilemoe/tilemoe.hpp"

using namespace tilemoe;

namespace {

struct Case {
  std::string config;
  std::int64_t tokens;
  DType dtype;
};

double expert_flops(const MoeConfig& c, std::int64_t T) {
  const double rows = is_gated(c.activation) ? 3.0 : 2.0;
  return 2.0 * rows * c.d_model * static_cast<double>(T) *
         (static_cast<double>(c.top_k) * c.d_expert + static_cast<double>(c.num_shared) * c.d_shared);
}

void bm_forward(benchmark::State& st, Case cs, Algorithm alg) {
  const MoeConfig& c = preset(cs.config);
  MoeWeights w = random_weights(c, cs.dtype, 1);
  Tensor x = random_tokens(cs.tokens, c.d_model, cs.dtype, 2);
  ForwardOptions opt;
  opt.algorithm = alg;
  for (auto _ : st) benchmark::DoNotOptimize(moe_forward(c, w, x, opt).raw());
  st.counters["GFLOPs"] = benchmark::Counter(expert_flops(c, cs.tokens) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// The same FLOPs as one dense GEMM pair over all T*K rows (+ the shared experts' rows).
void bm_dense(benchmark::State& st, Case cs) {
  const MoeConfig& c = preset(cs.config);
  const std::int64_t m = cs.tokens * c.top_k + cs.tokens * c.num_shared;
  const std::int64_t n13 = (is_gated(c.activation) ? 2 : 1) * c.d_expert, d = c.d_model, n = c.d_expert;
  std::vector<float> a(static_cast<std::size_t>(m * d), 0.5f), w13(static_cast<std::size_t>(n13 * d), 0.25f),
      h(static_cast<std::size_t>(m * n13)), w2(static_cast<std::size_t>(d * n), 0.125f), y(static_cast<std::size_t>(m * d));
  for (auto _ : st) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n13, d, 1.0f, a.data(), d, w13.data(), d, 0.0f, h.data(), n13);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, d, n, 1.0f, h.data(), n13, w2.data(), n, 0.0f, y.data(), d);
    benchmark::DoNotOptimize(y.data());
  }
  st.counters["GFLOPs"] = benchmark::Counter(expert_flops(c, cs.tokens) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// Keeps every run's time for the summary, which shows the median over repetitions.
class Collector : public benchmark::ConsoleReporter {
 public:
  std::map<std::string, std::vector<double>> ms;
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& r : runs) {
      if (r.run_type != Run::RT_Iteration) continue;
      std::string name = r.benchmark_name();
      if (auto p = name.find("/real_time"); p != std::string::npos) name.erase(p);
      ms[name].push_back(r.GetAdjustedRealTime());
    }
    ConsoleReporter::ReportRuns(runs);
  }
  double median_ms(const std::string& name) const {
    std::vector<double> v = ms.at(name);
    std::sort(v.begin(), v.end());
    const std::size_t h = v.size() / 2;
    return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
  }
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string configs = "demo,olmoe-1b-7b,qwen3-30b-a3b", tokens = "1024,4096", dtype = "fp32",
              json = "bench_cpu_moe.json";
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    auto take = [&](const char* name, std::string& into) {
      if (std::strcmp(argv[i], name) != 0) return false;
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_cpu_moe: error: %s needs a value\n", name);
        std::exit(2);
      }
      into = argv[++i];
      return true;
    };
    if (take("--configs", configs) || take("--tokens", tokens) || take("--dtype", dtype) || take("--json", json)) continue;
    rest.push_back(argv[i]);
  }
  int rc = static_cast<int>(rest.size());
  benchmark::Initialize(&rc, rest.data());
  std::vector<Case> cases;
  try {
    for (const auto& cfg : split(configs))
      for (const auto& t : split(tokens)) {
        preset(cfg);  // validates the name
        cases.push_back({cfg, parse_int("--tokens", t, 1, 1ll << 24), parse_dtype(dtype)});
      }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cpu_moe: error: %s\n", e.what());
    return 2;
  }
  for (const auto& cs : cases) {
    const std::string base = cs.config + "/T" + std::to_string(cs.tokens);
    benchmark::RegisterBenchmark((base + "/dense_gemm").c_str(), bm_dense, cs)->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark((base + "/sequential").c_str(), bm_forward, cs, Algorithm::sequential)->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark((base + "/grouped").c_str(), bm_forward, cs, Algorithm::grouped)->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  Collector rep;
  benchmark::RunSpecifiedBenchmarks(&rep);

  std::printf("\n%-22s %8s %12s %12s %12s %10s %10s\n", "case", "dtype", "dense GF/s", "seq GF/s", "grouped GF/s",
              "seq/dense", "grp/dense");
  std::FILE* f = std::fopen(json.c_str(), "w");
  if (f) {
    std::time_t now = std::time(nullptr);
    char date[32];
    std::strftime(date, sizeof date, "%Y-%m-%d", std::gmtime(&now));
    std::fprintf(f, "{\"machine\": \"cpu, %u threads\", \"date\": \"%s\", \"results\": [", std::thread::hardware_concurrency(), date);
  }
  bool first = true;
  for (const auto& cs : cases) {
    const std::string base = cs.config + "/T" + std::to_string(cs.tokens);
    if (!rep.ms.count(base + "/grouped")) continue;
    const double gflop = expert_flops(preset(cs.config), cs.tokens) / 1e9;
    const double seq_ms = rep.median_ms(base + "/sequential"), grp_ms = rep.median_ms(base + "/grouped");
    const double dense = gflop / (rep.median_ms(base + "/dense_gemm") / 1e3), seq = gflop / (seq_ms / 1e3),
                 grp = gflop / (grp_ms / 1e3);
    std::printf("%-22s %8s %12.1f %12.1f %12.1f %9.0f%% %9.0f%%\n", base.c_str(), dtype.c_str(), dense, seq, grp,
                100 * seq / dense, 100 * grp / dense);
    if (f)
      std::fprintf(f, "%s\n  {\"config\": \"%s\", \"tokens\": %lld, \"dtype\": \"%s\", \"dense_gflops\": %.2f, "
                   "\"sequential_gflops\": %.2f, \"grouped_gflops\": %.2f, \"sequential_ms\": %.3f, \"grouped_ms\": %.3f, \"repetitions\": %zu}",
                   first ? "" : ",", cs.config.c_str(), (long long)cs.tokens, dtype.c_str(), dense, seq, grp,
                   seq_ms, grp_ms, rep.ms.at(base + "/grouped").size());
    first = false;
  }
  if (f) {
    std::fprintf(f, "\n]}\n");
    std::fclose(f);
    std::printf("\nwrote %s\n", json.c_str());
  }
  return 0;
}
