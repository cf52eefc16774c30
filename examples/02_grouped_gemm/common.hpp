// The harness both programs share: a layer from the command line, timing, and a check against
// the float64 reference on a sample of tokens. Each program picks one expert algorithm.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "tilemoe/tilemoe.hpp"

#if TILEMOE_WITH_CUDA
#include <cuda_runtime.h>  // events, to time the GPU work alone
#endif

namespace example {

struct Problem {
  int experts = 128, topk = 8;
  std::int64_t tokens = 24576, d = 1536, n = 256;
  int reps = 10;
};

inline Problem parse(int argc, char** argv, const char* prog) {
  Problem p;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "-h" || k == "--help") {
      std::printf("usage: %s [--experts E] [--tokens T] [--d D] [--n N] [--topk K] [--reps R]\n"
                  "defaults: SonicMoE's 7B layer, E 128, T 24576, d 1536, n 256, K 8\n", prog);
      std::exit(0);
    }
    if (i + 1 >= argc) throw tilemoe::InvalidArgument(k + ": expected a value");
    const std::string text = argv[++i];
    // The layer's own limits (E, K, d, n) are the library's to check (MoeConfig::validate).
    auto value = [&](long long lo, long long hi) { return tilemoe::parse_int(k, text, lo, hi); };
    constexpr long long kBig = 1ll << 24;
    if (k == "--experts") p.experts = static_cast<int>(value(1, 4096));
    else if (k == "--tokens") p.tokens = value(1, kBig);
    else if (k == "--d") p.d = value(1, kBig);
    else if (k == "--n") p.n = value(1, kBig);
    else if (k == "--topk") p.topk = static_cast<int>(value(1, 4096));
    else if (k == "--reps") p.reps = static_cast<int>(value(1, 100000));
    else throw tilemoe::InvalidArgument("argument '" + k + "': unknown (see --help)");
  }
  return p;
}

// Runs the layer with `algorithm`, prints time and TFLOP/s, checks a sample of tokens against
// the float64 reference. Returns the process exit code.
inline int run(int argc, char** argv, const char* prog, tilemoe::Algorithm algorithm) {
  using namespace tilemoe;
  try {
    const Problem p = parse(argc, argv, prog);
    MoeConfig c;
    c.name = "cli";
    c.d_model = p.d;
    c.d_expert = p.n;
    c.num_experts = p.experts;
    c.top_k = p.topk;
    c.validate();  // bad input is named with or without a GPU
    if (!cuda_available()) {
      std::printf("%s: no CUDA GPU (or a build without the CUDA backend): this step runs on the GPU\n", prog);
      return 2;
    }
    std::printf("%s: T %lld, d %lld, n %lld, E %d, K %d, bf16, %s experts\n", prog, (long long)p.tokens,
                (long long)p.d, (long long)p.n, p.experts, p.topk, to_string(algorithm));
    const MoeWeights wh = random_weights(c, DType::bf16, 1);
    const Tensor xh = random_tokens(p.tokens, p.d, DType::bf16, 2);
    const MoeWeights w = wh.to(Device::cuda);
    const Tensor x = xh.to(Device::cuda);
    ForwardOptions opt;
    opt.algorithm = algorithm;
    ForwardTrace tr;
    Tensor out = moe_forward(c, w, x, opt, &tr);  // warm-up, and the routing for the check
    std::vector<double> ms;
#if TILEMOE_WITH_CUDA
    // The library runs on cudaStreamPerThread; events there time the forward's GPU work.
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    for (int r = 0; r < p.reps; ++r) {
      cudaEventRecord(e0, cudaStreamPerThread);
      out = moe_forward(c, w, x, opt);
      cudaEventRecord(e1, cudaStreamPerThread);
      if (cudaEventSynchronize(e1) != cudaSuccess) throw DeviceError("cudaEventSynchronize failed");
      float v = 0;
      cudaEventElapsedTime(&v, e0, e1);
      ms.push_back(v);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
#endif
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2];
    const double tflops = c.flops_per_token() * static_cast<double>(p.tokens) / (med * 1e-3) / 1e12;
    std::printf("time %.3f ms (median of %d, CUDA events), %.1f TFLOP/s\n", med,
                p.reps, tflops);

    // Check 32 tokens against the float64 reference.
    std::mt19937_64 g(3);
    std::vector<std::int64_t> tokens{0, p.tokens - 1};
    while (tokens.size() < 32 && static_cast<std::int64_t>(tokens.size()) < p.tokens)
      tokens.push_back(static_cast<std::int64_t>(g() % p.tokens));
    const std::vector<float> o = out.to_floats(), xf = xh.to_floats();
    std::vector<float> got, xs;
    Routing sub;
    sub.num_tokens = static_cast<std::int64_t>(tokens.size());
    sub.num_experts = p.experts;
    sub.token_offsets.push_back(0);
    for (std::int64_t t : tokens) {
      got.insert(got.end(), o.begin() + t * p.d, o.begin() + (t + 1) * p.d);
      xs.insert(xs.end(), xf.begin() + t * p.d, xf.begin() + (t + 1) * p.d);
      for (auto a = tr.routing.token_offsets[t]; a < tr.routing.token_offsets[t + 1]; ++a) {
        sub.expert.push_back(tr.routing.expert[a]);
        sub.weight.push_back(tr.routing.weight[a]);
      }
      sub.token_offsets.push_back(static_cast<std::int64_t>(sub.expert.size()));
    }
    const Tensor xsub = Tensor::from_floats({sub.num_tokens, p.d}, xs, DType::bf16);
    const double err = relative_error(got, reference_forward(c, wh, xsub, sub));
    const bool ok = err < 1e-2;
    std::printf("check: relative error %.2e on %zu tokens vs the float64 reference: %s\n", err, tokens.size(),
                ok ? "OK" : "MISMATCH");
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", prog, e.what());
    return 1;
  }
}

}  // namespace example
