// Helpers shared by the GPU tests: skipping without a GPU, fresh random data, a reference on a
// sample of tokens.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "tilemoe/tilemoe.hpp"

#if TILEMOE_WITH_CUDA
#include <cuda_runtime.h>
#endif

#define TILEMOE_REQUIRE_GPU() \
  if (!tilemoe::cuda_available()) GTEST_SKIP() << "no CUDA GPU"

namespace tilemoe::test {

// Under compute-sanitizer (scripts/gpu_check.sh sets TILEMOE_SANITIZE=1) the tests keep to
// their small cases: the tools slow kernels by 10-100x.
inline bool sanitizing() { return std::getenv("TILEMOE_SANITIZE") != nullptr; }

// Sets (value) or clears (nullptr) an environment variable for a scope and restores it after, so
// that a test's kernel switch does not clobber one the whole run was given (gpu_check.sh TEST_ENVS
// runs the fast-path tests under such settings).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) setenv(name, value, 1);
    else unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_) setenv(name_, old_->c_str(), 1);
    else unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// An sm_90 GPU (H100/H200), where the fused path's kernels run.
inline bool is_hopper() {
#if TILEMOE_WITH_CUDA
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  return major == 9 && minor == 0;
#else
  return false;
#endif
}

// A fresh seed per call, so that every run draws new inputs (printed on failure by the caller).
inline std::uint64_t fresh_seed() {
  static std::mt19937_64 gen(std::random_device{}());
  return gen();
}

// Routing restricted to some tokens (renumbered 0..), and x's rows of those tokens.
inline Routing sub_routing(const Routing& r, const std::vector<std::int64_t>& tokens) {
  Routing s;
  s.num_tokens = static_cast<std::int64_t>(tokens.size());
  s.num_experts = r.num_experts;
  s.token_offsets.push_back(0);
  for (std::int64_t t : tokens) {
    for (std::int64_t a = r.token_offsets[t]; a < r.token_offsets[t + 1]; ++a) {
      s.expert.push_back(r.expert[a]);
      s.weight.push_back(r.weight[a]);
    }
    s.token_offsets.push_back(static_cast<std::int64_t>(s.expert.size()));
  }
  return s;
}

inline Tensor sub_rows(const Tensor& x_host, const std::vector<std::int64_t>& tokens) {
  const std::int64_t d = x_host.dim(1);
  const std::vector<float> all = x_host.to_floats();
  std::vector<float> v;
  v.reserve(tokens.size() * d);
  for (std::int64_t t : tokens) v.insert(v.end(), all.begin() + t * d, all.begin() + (t + 1) * d);
  return Tensor::from_floats({static_cast<std::int64_t>(tokens.size()), d}, v, x_host.dtype());
}

inline std::vector<std::int64_t> sample_tokens(std::int64_t T, int count, std::uint64_t seed) {
  std::vector<std::int64_t> s;
  if (T <= count) {
    for (std::int64_t t = 0; t < T; ++t) s.push_back(t);
    return s;
  }
  std::mt19937_64 g(seed);
  s.push_back(0);
  s.push_back(T - 1);
  while (static_cast<int>(s.size()) < count) s.push_back(static_cast<std::int64_t>(g() % T));
  return s;
}

// Relative error of out's rows `tokens` (all rows when empty) against the float64 reference.
inline double forward_error(const MoeConfig& cfg, const MoeWeights& w_host, const Tensor& x_host,
                            const Tensor& out, const Routing& r, const std::vector<std::int64_t>& tokens = {}) {
  const std::vector<float> o = out.to_floats();
  if (tokens.empty()) return relative_error(o, reference_forward(cfg, w_host, x_host, r));
  const std::int64_t d = cfg.d_model;
  std::vector<float> os;
  for (std::int64_t t : tokens) os.insert(os.end(), o.begin() + t * d, o.begin() + (t + 1) * d);
  return relative_error(os, reference_forward(cfg, w_host, sub_rows(x_host, tokens), sub_routing(r, tokens)));
}

#if TILEMOE_WITH_CUDA
// A GPU forward whose result cannot come from an earlier run's memory: the thread's workspaces
// first hold a forward on other tokens of the same shape (so that a tile a kernel skips keeps
// wrong values), and the output goes into a buffer of bf16/fp32 NaNs (0xff bytes).
inline Tensor fresh_forward(const MoeConfig& cfg, const MoeWeights& w, const Tensor& x, const ForwardOptions& opt,
                            ForwardTrace* trace = nullptr) {
  const Tensor other = random_tokens(x.dim(0), x.dim(1), x.dtype(), fresh_seed()).to(Device::cuda);
  (void)moe_forward(cfg, w, other, opt);
  Tensor out = Tensor::empty({x.dim(0), cfg.d_model}, x.dtype(), Device::cuda);
  EXPECT_EQ(cudaMemsetAsync(out.raw(), 0xff, out.nbytes(), cudaStreamPerThread), cudaSuccess);
  return moe_forward_into(cfg, w, x, out, opt, trace);
}
#endif

}  // namespace tilemoe::test
