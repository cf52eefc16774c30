// Step 3: IO overlap. The fused path's grouped GEMMs are warp-specialized: a producer warpgroup
// loads tiles (TMA for the weights, cp.async gathers of the token rows) into a ring of shared-
// memory stages while two consumer warpgroups run wgmma on the stages already loaded. With one
// stage there is nothing to overlap: each k tile is loaded, then computed, and the tensor cores
// wait for every load. With four the loads of later k tiles (and
// of the next tile, the producer runs ahead of the epilogue) hide behind the math.
// This program times the same kernels on the same layer both ways, per projection and for the
// whole layer, and checks that both compute the same output.
//   io_overlap [--config sonic-7b] [--tokens 24576] [--reps 20]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "tilemoe/tilemoe.hpp"

using namespace tilemoe;

namespace {

struct Args {
  std::string config = "sonic-7b";
  std::int64_t tokens = 24576;
  int reps = 20;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "-h" || k == "--help") {
      std::printf("usage: io_overlap [--config NAME] [--tokens T] [--reps R]\n"
                  "times the fused path's GEMMs with 1 pipeline stage (load, then compute) and with 4\n");
      std::exit(0);
    }
    if (i + 1 >= argc) throw InvalidArgument(k + ": expected a value");
    const std::string v = argv[++i];
    if (k == "--config") a.config = v;
    else if (k == "--tokens") a.tokens = parse_int(k, v, 1, 1ll << 24);
    else if (k == "--reps") a.reps = static_cast<int>(parse_int(k, v, 1, 100000));
    else throw InvalidArgument("argument '" + k + "': unknown (see --help)");
  }
  return a;
}

// Median stage times (ms) of `reps` forwards, "layer" being their sum.
std::map<std::string, double> time_stages(const MoeConfig& c, const MoeWeights& w, const Tensor& x, int stages,
                                          int reps, std::string* path) {
  ForwardOptions opt;
  opt.algorithm = Algorithm::fused;
  opt.pipeline_stages = stages;
  opt.time_stages = true;
  std::map<std::string, std::vector<double>> all;
  for (int r = 0; r <= reps; ++r) {  // the first is a warm-up
    ForwardTrace tr;
    (void)moe_forward(c, w, x, opt, &tr);
    *path = tr.path;
    if (r == 0) continue;
    double layer = 0;
    for (const StageTime& s : tr.stages) {
      all[s.name].push_back(s.ms);
      layer += s.ms;
    }
    all["layer"].push_back(layer);
  }
  std::map<std::string, double> med;
  for (auto& [name, v] : all) {
    std::sort(v.begin(), v.end());
    med[name] = v[v.size() / 2];
  }
  return med;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
    const MoeConfig& c = preset(a.config);
    if (!cuda_available()) {
      std::printf("io_overlap: no CUDA GPU (or a build without the CUDA backend): this step runs on the GPU\n");
      return 2;
    }
    std::printf("io_overlap: %s (d %lld, n %lld, E %d, K %d), T %lld, bf16, on %s\n", c.name.c_str(),
                (long long)c.d_model, (long long)c.d_expert, c.num_experts, c.top_k, (long long)a.tokens,
                device_name(Device::cuda).c_str());
    const MoeWeights w = random_weights(c, DType::bf16, 1).to(Device::cuda);
    const Tensor x = random_tokens(a.tokens, c.d_model, DType::bf16, 2).to(Device::cuda);

    std::string path1, path4;
    const auto one = time_stages(c, w, x, 1, a.reps, &path1);
    const auto four = time_stages(c, w, x, 4, a.reps, &path4);
    std::printf("kernels: %s\n\n", path4.c_str());
    if (path4.rfind("fused: ", 0) != 0)
      std::printf("note: the fused kernels did not run everywhere here, so the stage count changes little\n\n");
    std::printf("%-16s %12s %12s %10s\n", "stage (median)", "1 stage ms", "4 stages ms", "reduction");
    for (const char* s : {"up_projection", "down_projection", "layer"}) {
      if (!one.count(s) || !four.count(s)) continue;
      const double r = 1.0 - four.at(s) / one.at(s);
      std::printf("%-16s %12.3f %12.3f %9.1f%%\n", s, one.at(s), four.at(s), 100 * r);
    }

    // Both ways compute the same function: compare the outputs.
    ForwardOptions o1, o4;
    o1.algorithm = o4.algorithm = Algorithm::fused;
    o1.pipeline_stages = 1;
    o4.pipeline_stages = 4;
    const std::vector<float> y1 = moe_forward(c, w, x, o1).to_floats(), y4 = moe_forward(c, w, x, o4).to_floats();
    double num = 0, den = 0;
    for (std::size_t i = 0; i < y1.size(); ++i) {
      num += (double(y1[i]) - y4[i]) * (double(y1[i]) - y4[i]);
      den += double(y4[i]) * y4[i];
    }
    const double diff = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
    std::printf("\noutputs of the two pipelines: relative difference %.2e (%s)\n", diff,
                diff < 1e-6 ? "same" : "DIFFERENT");
    const double layer_cut = 1.0 - four.at("layer") / one.at("layer");
    std::printf("IO overlap cut the layer's time by %.1f%% (the chapter expects 10-15%% or more)\n", 100 * layer_cut);
    return diff < 1e-6 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "io_overlap: %s\n", e.what());
    return 1;
  }
}
