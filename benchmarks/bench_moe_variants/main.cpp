// bench_moe_variants: the MoE layer forward on the GPU, for presets x token counts, timed as
//   sequential        one cuBLAS GEMM pair per expert from a host loop (the baseline)
//   grouped           one launch per projection for all experts (no host sync)
//   grouped+rounding  the same after tile-aware token rounding (nearest, M = 128)
//   fused             the Hopper path: persistent warp-specialized kernels, TMA loads overlapped
//                     with wgmma (ForwardOptions::algorithm = fused)
//   fused_1stage      the warp-specialized kernels with one pipeline stage: load, then compute
//   fused_4stage      the same with four stages: the IO overlap
//   fused+rounding    fused after token rounding
//   fused_graph       fused, captured once in a CUDA graph and replayed (no host launch work)
//   dense_cublas      a cuBLAS GEMM pair with the same FLOPs ([T*K, d] x [d, 2n], [T*K, n] x [n, d],
//                     plus the shared experts' pair): the upper bound
//   torch_grouped_mm  PyTorch on the same inputs (router, sort, torch._grouped_mm, SwiGLU,
//                     torch._grouped_mm, weighted index_add), benchmarks/peers/torch_pipeline.py
//   scattermoe        ScatterMoE's Triton kernels (github.com/shawntan/scattermoe) on the same inputs,
//                     benchmarks/peers/scattermoe_pipeline.py (--scattermoe)
//   sonicmoe          SonicMoE (PyPI sonic-moe, QuACK / CuTe-DSL kernels) on the same inputs,
//                     benchmarks/peers/sonicmoe_pipeline.py (--sonicmoe)
// Each time: warm-up, then the median of --reps runs, each after an L2 flush, by CUDA events. A
// layer's variants take turns (--order interleaved, the default): rep r of every variant, then rep
// r + 1, so that the card's clock and temperature, which drift over a layer's seconds of timing,
// fall on each variant alike (timed one after another, the same configuration measured 4.36 and
// 4.92 ms in one run, H200 run 143; --order blocks times them so).
// The memory roofline of a layer: the bytes it must move (the touched experts' weights, the
// shared experts', the router's, x and out) over the device-to-device copy bandwidth measured in
// the same run (%mem: roofline time / measured time; what bounds small token counts).
// Our variants are the whole layer (router included), as is the PyTorch pipeline.
// Prints ms, TFLOP/s, share of the upper bound and speedup over sequential; writes JSON.
#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <functional>
#include <memory>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tilemoe/tilemoe.hpp"

#if TILEMOE_WITH_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>
namespace bench {
void time_stages(const tilemoe::MoeConfig& c, const tilemoe::MoeWeights& w, const tilemoe::Tensor& x, int reps);
}
#endif

using namespace tilemoe;

namespace {

struct Args {
  std::vector<std::string> configs{"sonic-7b", "qwen3-30b-a3b", "olmoe-1b-7b", "mixtral-8x7b", "deepseek-v3"};
  std::vector<std::int64_t> tokens{24576};
  int reps = 10, warmup = 3;
  std::string json, dump, torch_script, scattermoe_script, sonicmoe_script, python = "python3";
  std::uint64_t seed = 1234;
  bool sequential = true;
  bool stages = false;
  bool interleaved = true;  // --order: the variants' reps in turns (interleaved) or in blocks
  DType router_dtype = DType::f32;  // bf16: the router weights as checkpoints store them (one bf16 GEMM)
  std::vector<std::string> variants;  // empty: all of ours
  // What to run, from configs and tokens: an entry "spec@T" at token count T only (the issue's
  // layers each have their own T), a plain entry at every --tokens count.
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> runs;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> v;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) v.push_back(item);
  return v;
}

void usage() {
  std::puts(
      "usage: bench_moe_variants [--configs a,b:E256:K4,c:d4096:n512@32768] [--tokens 4096,24576] [--reps N] [--warmup N]\n"
      "                          [--json out.json] [--dump dir --torch peers/torch_pipeline.py [--python python3]]\n"
      "                          [--scattermoe peers/scattermoe_pipeline.py] [--sonicmoe peers/sonicmoe_pipeline.py] (with --dump)\n"
      "                          [--no-sequential] [--stages] [--seed S] [--router-dtype fp32|bf16]\n"
      "                          [--order interleaved|blocks] (our variants' reps in turns, or each variant's in a block)\n"
      "                          [--variants grouped,fused,...] (ours to time; default all: sequential, grouped,\n"
      "                           grouped+rounding, fused, fused_1stage, fused_4stage, fused+rounding, fused_graph,\n"
      "                           dense_cublas)");
}

constexpr long long kMaxTokens = 1ll << 24;

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) throw InvalidArgument(k + ": expected a value");
      return argv[++i];
    };
    if (k == "--configs") a.configs = split(val());
    else if (k == "--tokens") {
      a.tokens.clear();
      for (auto& t : split(val())) a.tokens.push_back(parse_int("--tokens", t, 1, kMaxTokens));
    } else if (k == "--reps") a.reps = static_cast<int>(parse_int("--reps", val(), 1, 100000));
    else if (k == "--warmup") a.warmup = static_cast<int>(parse_int("--warmup", val(), 0, 100000));
    else if (k == "--json") a.json = val();
    else if (k == "--dump") a.dump = val();
    else if (k == "--torch") a.torch_script = val();
    else if (k == "--scattermoe") a.scattermoe_script = val();
    else if (k == "--sonicmoe") a.sonicmoe_script = val();
    else if (k == "--python") a.python = val();
    else if (k == "--seed") a.seed = static_cast<std::uint64_t>(parse_int("--seed", val(), 0, LLONG_MAX));
    else if (k == "--no-sequential") a.sequential = false;
    else if (k == "--stages") a.stages = true;
    else if (k == "--variants") a.variants = split(val());
    else if (k == "--router-dtype") a.router_dtype = parse_dtype(val(), "--router-dtype");
    else if (k == "--order") {
      const std::string o = val();
      if (o != "interleaved" && o != "blocks")
        throw InvalidArgument("--order: '" + o + "' is not one of interleaved, blocks");
      a.interleaved = o == "interleaved";
    }
    else if (k == "--help" || k == "-h") { usage(); std::exit(0); }
    else throw InvalidArgument("argument '" + k + "': unknown (see --help)");
  }
  static const char* known[] = {"sequential",   "grouped",        "grouped+rounding", "fused",       "fused_1stage",
                                "fused_4stage", "fused+rounding", "fused_graph",      "dense_cublas"};
  for (const std::string& v : a.variants)
    if (std::find(std::begin(known), std::end(known), v) == std::end(known))
      throw InvalidArgument("--variants: '" + v + "' is not one of ours (see --help)");
  for (const std::string& entry : a.configs) {  // checked here, before any GPU work
    const std::size_t at = entry.find('@');
    std::vector<std::int64_t> tokens = a.tokens;
    if (at != std::string::npos) tokens = {parse_int("--configs " + entry + ": tokens", entry.substr(at + 1), 1, kMaxTokens)};
    a.runs.push_back({entry.substr(0, at), tokens});
  }
  return a;
}


struct Result {
  std::string config;
  std::int64_t tokens;
  std::string variant;
  double ms, tflops;
  double mem_ms = 0;  // the memory roofline of this layer, ms (0: not computed)
  double extra_bytes = -1;  // device memory beyond inputs, weights and output (-1: not measured)
  double gemm_ms = 0;       // the expert GEMM kernels' stage medians summed (fused variants; 0: not timed)
  std::vector<std::pair<std::string, double>> stages;  // stage medians, ms, in order (fused variants)
  double host_us = 0;       // moe_forward's host time per call, the stream idle before it (fused variants)
};

void write_file(const std::string& path, const void* data, std::size_t bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  if (!f) throw Error("cannot write " + path);
}

std::string now_utc() {
  std::time_t t = std::time(nullptr);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

#if TILEMOE_WITH_CUDA
#define CK(call)                                                                                  \
  do {                                                                                            \
    cudaError_t e_ = (call);                                                                      \
    if (e_ != cudaSuccess) throw DeviceError(std::string(#call) + ": " + cudaGetErrorString(e_)); \
  } while (0)
#define CB(call)                                                                              \
  do {                                                                                        \
    cublasStatus_t s_ = (call);                                                               \
    if (s_ != CUBLAS_STATUS_SUCCESS) throw DeviceError(std::string(#call) + ": cuBLAS error"); \
  } while (0)

class Timer {
 public:
  Timer() {
    CK(cudaEventCreate(&a_));
    CK(cudaEventCreate(&b_));
    int l2 = 0;
    CK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0));
    flush_bytes_ = static_cast<std::size_t>(l2) * 2;
    CK(cudaMalloc(&flush_, flush_bytes_));
  }
  ~Timer() {
    cudaFree(flush_);
    cudaEventDestroy(a_);
    cudaEventDestroy(b_);
  }
  // ms of one fn() after an L2 flush (rep i picks the flush's byte); fn enqueues on
  // cudaStreamPerThread.
  template <class Fn>
  double once_ms(Fn&& fn, int i) {
    cudaStream_t s = cudaStreamPerThread;
    CK(cudaMemsetAsync(flush_, i & 0xff, flush_bytes_, s));
    CK(cudaEventRecord(a_, s));
    fn();
    CK(cudaEventRecord(b_, s));
    CK(cudaEventSynchronize(b_));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a_, b_));
    return ms;
  }
  static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  }

 private:
  cudaEvent_t a_, b_;
  void* flush_ = nullptr;
  std::size_t flush_bytes_ = 0;
};

// Something timed (a layer's variant, the copy): a callable that enqueues it once, its reps' ms.
struct Timed {
  std::string name;
  std::function<void()> run;
  std::vector<double> ms;
};

// The variants' reps in turns (interleaved: every variant's warm-up, then rep r of each variant,
// then rep r + 1) or in blocks (one variant's warm-up and reps, then the next's: the order of
// every run up to H200 run 143).
void time_all(Timer& timer, std::vector<Timed>& vs, int warmup, int reps, bool interleaved) {
  auto warm = [&](Timed& v) {
    for (int i = 0; i < warmup; ++i) v.run();
    CK(cudaStreamSynchronize(cudaStreamPerThread));
  };
  if (interleaved) {
    for (Timed& v : vs) warm(v);
    for (int i = 0; i < reps; ++i)
      for (Timed& v : vs) v.ms.push_back(timer.once_ms(v.run, i));
  } else {
    for (Timed& v : vs) {
      warm(v);
      for (int i = 0; i < reps; ++i) v.ms.push_back(timer.once_ms(v.run, i));
    }
  }
}

// Copy bandwidth (read + write, TB/s): a 1 GiB device-to-device copy, median of --reps.
double copy_tbps(Timer& timer, const Args& a) {
  const std::size_t bytes = std::size_t(1) << 30;
  void *src = nullptr, *dst = nullptr;
  CK(cudaMalloc(&src, bytes));
  CK(cudaMalloc(&dst, bytes));
  CK(cudaMemset(src, 1, bytes));
  std::vector<Timed> copy{
      {"copy", [&] { CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cudaStreamPerThread)); }, {}}};
  time_all(timer, copy, a.warmup, a.reps, false);
  const double ms = Timer::median(copy[0].ms);
  cudaFree(src);
  cudaFree(dst);
  return 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e12;
}

// The forward captured once in a CUDA graph and replayed, as a serving stack runs its decode
// steps: the same kernels, without the host's launch work between them (the layer has no host
// synchronization, so it captures).
class GraphReplay {
 public:
  template <class Fwd>
  explicit GraphReplay(Fwd&& forward) {
    cudaStream_t s = cudaStreamPerThread;
    (void)forward();  // scratch sized, handles created, kernels loaded: nothing allocates while capturing
    CK(cudaStreamSynchronize(s));
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
    try {
      out_ = forward();  // the graph writes into this tensor: it lives as long as the graph
    } catch (...) {
      cudaStreamEndCapture(s, &graph_);
      if (graph_) cudaGraphDestroy(graph_);
      throw;
    }
    CK(cudaStreamEndCapture(s, &graph_));
    CK(cudaGraphInstantiate(&exec_, graph_, 0));
  }
  GraphReplay(const GraphReplay&) = delete;
  GraphReplay& operator=(const GraphReplay&) = delete;
  ~GraphReplay() {
    cudaStreamSynchronize(cudaStreamPerThread);
    if (exec_) cudaGraphExecDestroy(exec_);
    if (graph_) cudaGraphDestroy(graph_);
  }
  void launch() { CK(cudaGraphLaunch(exec_, cudaStreamPerThread)); }

 private:
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
  Tensor out_;
};

// Bytes a forward must move at least: the weights of the experts that received tokens, the shared
// experts' and the router's, x in and out.
double layer_bytes(const MoeConfig& c, std::int64_t T, const std::vector<std::int64_t>& counts, double router_es) {
  const double d = static_cast<double>(c.d_model), n = static_cast<double>(c.d_expert);
  const double rows = is_gated(c.activation) ? 2 * n : n;
  double touched = 0;
  for (auto k : counts) touched += k > 0 ? 1 : 0;
  const double ns = static_cast<double>(c.d_shared), srows = is_gated(c.activation) ? 2 * ns : ns;
  return 2.0 * touched * (rows * d + d * n) + 2.0 * c.num_shared * (srows * d + d * ns) +
         router_es * c.num_experts * d + 2.0 * 2.0 * static_cast<double>(T) * d;
}

// The upper bound: dense GEMM pairs with the routed (M = T*K) and shared (M = T*S) shapes.
class DensePairs {
 public:
  DensePairs(const MoeConfig& c, std::int64_t T) {
    CB(cublasCreate(&h_));
    CB(cublasSetStream(h_, cudaStreamPerThread));
    struct Pair { std::int64_t M, n; };
    std::vector<Pair> pairs{{T * c.top_k, c.d_expert}};
    if (c.num_shared > 0) pairs.push_back({T * c.num_shared, c.d_shared});
    const std::int64_t d = c.d_model;
    const bool gated = is_gated(c.activation);
    for (auto [M, n] : pairs) {
      const std::int64_t r13 = gated ? 2 * n : n;
      Tensor x = random_uniform({M, d}, DType::bf16, 1.0f, 11).to(Device::cuda);
      Tensor w1 = random_uniform({r13, d}, DType::bf16, 0.02f, 12).to(Device::cuda);
      Tensor h1 = Tensor::empty({M, r13}, DType::bf16, Device::cuda);
      Tensor a1 = random_uniform({M, n}, DType::bf16, 1.0f, 13).to(Device::cuda);
      Tensor w2 = random_uniform({d, n}, DType::bf16, 0.02f, 14).to(Device::cuda);
      Tensor y = Tensor::empty({M, d}, DType::bf16, Device::cuda);
      gemms_.push_back({int(r13), int(M), int(d), w1.raw(), x.raw(), h1.raw()});
      gemms_.push_back({int(d), int(M), int(n), w2.raw(), a1.raw(), y.raw()});
      for (auto* t : {&x, &w1, &h1, &a1, &w2, &y}) bufs_.push_back(*t);
    }
  }
  DensePairs(const DensePairs&) = delete;
  DensePairs& operator=(const DensePairs&) = delete;
  ~DensePairs() {
    cudaStreamSynchronize(cudaStreamPerThread);
    cublasDestroy(h_);
  }
  void run() {
    const float one = 1.0f, zero = 0.0f;
    for (const G& g : gemms_)
      CB(cublasGemmEx(h_, CUBLAS_OP_T, CUBLAS_OP_N, g.m, g.n, g.k, &one, g.A, CUDA_R_16BF, g.k, g.B, CUDA_R_16BF, g.k,
                      &zero, g.C, CUDA_R_16BF, g.m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

 private:
  struct G { int m, n, k; const void *A, *B; void* C; };
  cublasHandle_t h_ = nullptr;
  std::vector<Tensor> bufs_;
  std::vector<G> gemms_;
};

#endif

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
#if !TILEMOE_WITH_CUDA
    std::puts("bench_moe_variants: this build has no CUDA backend; nothing to time (configure with -DTILEMOE_CUDA=ON on a GPU machine)");
    return 2;
#else
    if (!cuda_available()) {
      std::puts("bench_moe_variants: no CUDA GPU found; nothing to time");
      return 2;
    }
    cudaDeviceProp prop{};
    CK(cudaGetDeviceProperties(&prop, 0));
    const std::string card = prop.name;
    const char* commit_env = std::getenv("TILEMOE_COMMIT");
    const std::string commit = commit_env ? commit_env : "unknown";
    std::printf("card: %s   commit: %s   date: %s   reps %d (median), warm-up %d, L2 flushed, variants %s\n",
                card.c_str(), commit.c_str(), now_utc().c_str(), a.reps, a.warmup,
                a.interleaved ? "interleaved" : "in blocks");
    Timer timer;
    const double copy_bw = copy_tbps(timer, a);
    std::printf("device-to-device copy: %.2f TB/s (read + write), the memory roofline's bandwidth\n", copy_bw);
    std::vector<Result> results;
    std::vector<std::string> dumped;
    std::map<std::string, MoeConfig> configs;
    for (const auto& run : a.runs) configs[run.first] = preset_variant(run.first);  // "sonic-7b:E256:K4"
    for (const auto& [name, tokens] : a.runs) {
      const MoeConfig& c = configs.at(name);
      for (std::int64_t T : tokens) {
        const double flops = c.flops_per_token() * static_cast<double>(T);
        double mem_ms = 0;  // set once the routing is known
        auto add = [&](const std::string& variant, double ms) {
          // Rounding changes which experts are touched (at small T it can drop most assignments):
          // the top-k routing's roofline does not apply to it.
          const bool rounded = variant.find("rounding") != std::string::npos;
          results.push_back({c.name, T, variant, ms, flops / (ms * 1e-3) / 1e12, rounded ? 0.0 : mem_ms});
          std::printf("  %-16s T=%-7lld %-17s %9.3f ms %8.1f TFLOP/s\n", c.name.c_str(), (long long)T, variant.c_str(),
                      ms, results.back().tflops);
          std::fflush(stdout);
        };
        const std::uint64_t seed = a.seed + static_cast<std::uint64_t>(T);
        const std::int64_t d = c.d_model, n = c.d_expert, rows = is_gated(c.activation) ? 2 * n : n;
        MoeWeights wh = random_weights(c, DType::bf16, seed);
        if (a.router_dtype == DType::bf16) wh.router = wh.router.to(DType::bf16);
        const Tensor xh = random_tokens(T, c.d_model, DType::bf16, seed + 7);
        MoeWeights w = wh.to(Device::cuda);
        const Tensor x = xh.to(Device::cuda);

        ForwardOptions og;
        og.algorithm = Algorithm::grouped;
        ForwardTrace tr;
        (void)moe_forward(c, w, x, og, &tr);  // the routing, for the dump and the roofline
        mem_ms = layer_bytes(c, T, tr.counts, double(dtype_size(a.router_dtype))) / (copy_bw * 1e12) * 1e3;
        auto want = [&](const char* v) {
          if (std::string(v) == "sequential" && !a.sequential) return false;
          return a.variants.empty() || std::find(a.variants.begin(), a.variants.end(), v) != a.variants.end();
        };
        // Our variants, each checked by one forward first (token rounding can refuse a layer).
        std::vector<Timed> vs;
        auto enlist = [&](const char* name, std::function<void()> run) {
          if (!want(name)) return;
          try {
            run();
            CK(cudaStreamSynchronize(cudaStreamPerThread));
          } catch (const InvalidArgument& e) {
            std::printf("  %s skipped: %s\n", name, e.what());
            return;
          }
          vs.push_back({name, std::move(run), {}});
        };
        ForwardOptions os;
        os.algorithm = Algorithm::sequential;
        enlist("sequential", [&] { (void)moe_forward(c, w, x, os); });
        enlist("grouped", [&] { (void)moe_forward(c, w, x, og); });
        ForwardOptions orr = og;
        orr.rounding = RoundingOptions{};
        enlist("grouped+rounding", [&] { (void)moe_forward(c, w, x, orr); });
        ForwardOptions of = og;
        of.algorithm = Algorithm::fused;
        enlist("fused", [&] { (void)moe_forward(c, w, x, of); });
        ForwardOptions of1 = of, of4 = of;
        of1.pipeline_stages = 1;
        of4.pipeline_stages = 4;
        enlist("fused_1stage", [&] { (void)moe_forward(c, w, x, of1); });
        enlist("fused_4stage", [&] { (void)moe_forward(c, w, x, of4); });
        ForwardOptions ofr = of;
        ofr.rounding = RoundingOptions{};
        enlist("fused+rounding", [&] { (void)moe_forward(c, w, x, ofr); });
        // The graph is captured after every eager variant has run once: the library's grow-only
        // scratch, which the graph's kernels address, has reached its size, so the eager forwards
        // timed between the replays never reallocate it under the graph.
        std::unique_ptr<GraphReplay> graph;
        if (want("fused_graph")) {
          graph = std::make_unique<GraphReplay>([&] { return moe_forward(c, w, x, of); });
          enlist("fused_graph", [&] { graph->launch(); });
        }
        std::unique_ptr<DensePairs> dense;
        if (want("dense_cublas")) {
          dense = std::make_unique<DensePairs>(c, T);
          enlist("dense_cublas", [&] { dense->run(); });
        }
        time_all(timer, vs, a.warmup, a.reps, a.interleaved);
        for (const Timed& v : vs) add(v.name, Timer::median(v.ms));
        vs.clear();
        graph.reset();
        dense.reset();
        for (const ForwardOptions* o : {&of, &ofr}) {  // where the time goes: stage medians over reps
          const char* name = o == &of ? "fused" : "fused+rounding";
          if (!want(name)) continue;
          ForwardOptions timed = *o;
          timed.time_stages = true;
          ForwardTrace ft;
          std::map<std::string, std::vector<double>> st_ms;
          for (int r = 0; r < a.reps; ++r) {
            (void)moe_forward(c, w, x, timed, &ft);
            for (const StageTime& st : ft.stages) st_ms[st.name].push_back(st.ms);
          }
          std::printf("  %s: %s\n   ", name, ft.path.c_str());
          double gemm = 0;
          std::vector<std::pair<std::string, double>> medians;
          for (const StageTime& st : ft.stages) {
            auto& v = st_ms[st.name];
            std::sort(v.begin(), v.end());
            const double med = v[v.size() / 2];
            if (st.name == "up_projection" || st.name == "down_projection" || st.name == "shared_experts") gemm += med;
            std::printf(" %s %.3f", st.name.c_str(), med);
            medians.emplace_back(st.name, med);
          }
          std::printf(" ms (medians)\n    expert GEMM kernels %.3f ms", gemm);
          const double act_y = 2.0 * static_cast<double>(T) * c.top_k * static_cast<double>(n + d);
          std::printf(", workspace %.1f MB (act + y, 2 T K (n + d): %.1f MB)\n", ft.workspace_bytes / 1e6,
                      act_y / 1e6);
          // The host's work per forward (validation, launches, tensor maps, the output's
          // allocation): until moe_forward returns, from an idle stream. Where it is longer than
          // the GPU's first stages take, an eager forward waits on the host; fused_graph does not.
          std::vector<double> host;
          for (int r = 0; r < a.reps; ++r) {
            CK(cudaStreamSynchronize(cudaStreamPerThread));
            const auto t0 = std::chrono::steady_clock::now();
            const Tensor out = moe_forward(c, w, x, *o);
            host.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
            CK(cudaStreamSynchronize(cudaStreamPerThread));
          }
          std::sort(host.begin(), host.end());
          const double host_us = host[host.size() / 2];
          std::printf("    host: moe_forward returns after %.1f us (median, from an idle stream)\n", host_us);
          for (Result& r : results)  // the memory beyond inputs, weights and output: the workspace
            if (r.config == c.name && r.tokens == T && r.variant == name) {
              r.extra_bytes = double(ft.workspace_bytes);
              r.gemm_ms = gemm;
              r.stages = medians;
              r.host_us = host_us;
            }
        }
        if (a.stages) bench::time_stages(c, w, x, a.reps);

        if (!a.dump.empty()) {
          const std::string dir = a.dump + "/" + c.name + "_T" + std::to_string(T);
          if (std::system(("mkdir -p '" + dir + "'").c_str()) != 0) throw Error("cannot create " + dir);
          const std::int64_t wbytes = static_cast<std::int64_t>(wh.w13.nbytes() + wh.w2.nbytes());
          const bool dump_weights = wbytes <= (std::int64_t(4) << 30);
          write_file(dir + "/x.bin", xh.raw(), xh.nbytes());
          const Tensor wr = wh.router.to(DType::f32);  // the peers read fp32 (a bf16 router's values exactly)
          write_file(dir + "/router.bin", wr.raw(), wr.nbytes());
          if (c.router_bias) write_file(dir + "/router_bias.bin", wh.router_bias.raw(), wh.router_bias.nbytes());
          write_file(dir + "/ids.bin", tr.routing.expert.data(), tr.routing.expert.size() * 4);
          write_file(dir + "/weights.bin", tr.routing.weight.data(), tr.routing.weight.size() * 4);
          if (dump_weights) {
            write_file(dir + "/w13.bin", wh.w13.raw(), wh.w13.nbytes());
            write_file(dir + "/w2.bin", wh.w2.raw(), wh.w2.nbytes());
            if (c.num_shared > 0) {
              write_file(dir + "/shared_w13.bin", wh.shared_w13.raw(), wh.shared_w13.nbytes());
              write_file(dir + "/shared_w2.bin", wh.shared_w2.raw(), wh.shared_w2.nbytes());
            }
          }
          std::ofstream m(dir + "/meta.json");
          m << "{\"config\": \"" << c.name << "\", \"tokens\": " << T << ", \"d\": " << d << ", \"n\": " << n
            << ", \"experts\": " << c.num_experts << ", \"topk\": " << c.top_k << ", \"shared\": " << c.num_shared
            << ", \"d_shared\": " << c.d_shared << ", \"router\": \"" << to_string(c.router)
            << "\", \"router_dtype\": \"" << to_string(a.router_dtype)
            << "\", \"renormalize\": " << (c.renormalize ? "true" : "false")
            << ", \"gated\": " << (is_gated(c.activation) ? "true" : "false")
            << ", \"weights_dumped\": " << (dump_weights ? "true" : "false") << ", \"flops\": " << flops
            << ", \"reps\": " << a.reps << ", \"warmup\": " << a.warmup << "}\n";
          dumped.push_back(dir);
        }
      }
    }

    // A peer script on the dumped cases: its "RESULT config tokens ms" lines become results of `variant`.
    auto run_peer = [&](const std::string& script, const std::string& variant) {
      if (script.empty() || dumped.empty()) return;
      std::string cmd = a.python + " '" + script + "'";
      for (auto& d : dumped) cmd += " '" + d + "'";
      cmd += " 2>&1";
      std::printf("running the %s peer: %s\n", variant.c_str(), cmd.c_str());
      std::fflush(stdout);
      if (FILE* p = popen(cmd.c_str(), "r")) {
        char line[4096];
        while (std::fgets(line, sizeof line, p)) {
          std::fputs(line, stdout);
          char cfg[256];
          long long T = 0;
          double ms = 0, extra = -1;
          if (std::sscanf(line, "RESULT %255s %lld %lf %lf", cfg, &T, &ms, &extra) >= 3) {
            const auto it = configs.find(cfg);
            if (it == configs.end()) continue;
            const double flops = it->second.flops_per_token() * static_cast<double>(T);
            double mem = 0;
            for (const Result& r : results)
              if (r.config == cfg && r.tokens == T) mem = r.mem_ms;
            results.push_back({cfg, T, variant, ms, flops / (ms * 1e-3) / 1e12, mem, extra});
          }
        }
        const int rc = pclose(p);
        if (rc != 0) std::printf("%s peer exited with %d\n", variant.c_str(), rc);
      }
    };
    // Our pool's and workspaces' memory back to the driver first: the peers run in processes of
    // their own on the same card (PyTorch ran out of memory on DeepSeek-V3 at T 24576 on an H100
    // while this process kept 38 GB, run 157).
    if (!dumped.empty()) release_cached_memory();
    run_peer(a.torch_script, "torch_grouped_mm");
    run_peer(a.scattermoe_script, "scattermoe");
    run_peer(a.sonicmoe_script, "sonicmoe");

    // Table.
    std::map<std::pair<std::string, std::int64_t>, std::map<std::string, double>> ms;
    for (auto& r : results) ms[{r.config, r.tokens}][r.variant] = r.ms;
    std::printf("\n%-16s %7s %-17s %9s %9s %9s %9s %7s\n", "config", "T", "variant", "ms", "TFLOP/s", "%dense", "x seq",
                "%mem");
    for (auto& r : results) {
      auto& m = ms[{r.config, r.tokens}];
      const double dense = m.count("dense_cublas") ? m["dense_cublas"] : 0;
      const double seq = m.count("sequential") ? m["sequential"] : 0;
      char mem[16] = "      -";
      if (r.mem_ms > 0) std::snprintf(mem, sizeof mem, "%6.1f%%", 100.0 * r.mem_ms / r.ms);
      std::printf("%-16s %7lld %-17s %9.3f %9.1f %8.1f%% %9.2f %s\n", r.config.c_str(), (long long)r.tokens,
                  r.variant.c_str(), r.ms, r.tflops, dense > 0 ? 100.0 * dense / r.ms : 0.0, seq > 0 ? seq / r.ms : 0.0,
                  mem);
    }
    std::printf("\ndevice memory beyond inputs, weights and output (peak; ours: the forward's workspace)\n");
    std::printf("%-16s %7s %-17s %12s\n", "config", "T", "variant", "MB");
    for (auto& r : results)
      if (r.extra_bytes >= 0)
        std::printf("%-16s %7lld %-17s %12.1f\n", r.config.c_str(), (long long)r.tokens, r.variant.c_str(),
                    r.extra_bytes / 1e6);
    // Token rounding's effect on the expert kernels alone (the goal's "kernel time"), next to the
    // whole layer, which also pays for the rounding stages.
    bool header = false;
    for (auto& r : results) {
      if (r.variant != "fused+rounding" || r.gemm_ms <= 0) continue;
      for (auto& b : results) {
        if (b.config != r.config || b.tokens != r.tokens || b.variant != "fused" || b.gemm_ms <= 0) continue;
        if (!header) {
          std::printf("\ntoken rounding, fused: expert GEMM kernels (stage medians) and whole layer, top-k vs rounded\n");
          std::printf("%-16s %7s %10s %10s %8s %10s %10s %8s\n", "config", "T", "gemm ms", "rounded", "change", "layer ms",
                      "rounded", "change");
          header = true;
        }
        std::printf("%-16s %7lld %10.3f %10.3f %+7.1f%% %10.3f %10.3f %+7.1f%%\n", r.config.c_str(), (long long)r.tokens,
                    b.gemm_ms, r.gemm_ms, 100.0 * (r.gemm_ms / b.gemm_ms - 1.0), b.ms, r.ms, 100.0 * (r.ms / b.ms - 1.0));
      }
    }
    if (!a.json.empty()) {
      std::ofstream f(a.json);
      f << "{\"card\": \"" << card << "\", \"date\": \"" << now_utc() << "\", \"commit\": \"" << commit
        << "\", \"reps\": " << a.reps << ", \"warmup\": " << a.warmup << ", \"copy_tbps\": " << copy_bw
        << ", \"router_dtype\": \"" << to_string(a.router_dtype) << "\""
        << ", \"order\": \"" << (a.interleaved ? "interleaved" : "blocks") << "\""
        << ",\n \"results\": [\n";
      for (std::size_t i = 0; i < results.size(); ++i) {
        const auto& r = results[i];
        f << "  {\"config\": \"" << r.config << "\", \"tokens\": " << r.tokens << ", \"variant\": \"" << r.variant
          << "\", \"ms\": " << r.ms << ", \"tflops\": " << r.tflops << ", \"mem_roofline_ms\": " << r.mem_ms
          << (r.extra_bytes >= 0 ? ", \"extra_bytes\": " + std::to_string(static_cast<long long>(r.extra_bytes)) : "")
          << (r.gemm_ms > 0 ? ", \"gemm_ms\": " + std::to_string(r.gemm_ms) : "")
          << (r.host_us > 0 ? ", \"host_us\": " + std::to_string(r.host_us) : "");
        if (!r.stages.empty()) {
          f << ", \"stages\": {";
          for (std::size_t j = 0; j < r.stages.size(); ++j)
            f << (j ? ", " : "") << "\"" << r.stages[j].first << "\": " << r.stages[j].second;
          f << "}";
        }
        f << "}"
          << (i + 1 < results.size() ? "," : "")
          << "\n";
      }
      f << " ]}\n";
      std::printf("wrote %s\n", a.json.c_str());
    }
    return 0;
#endif
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_moe_variants: %s\n", e.what());
    return 1;
  }
}
