// Seeded random tensors, layer weights and tokens, from a counter-based hash (splitmix64 of
// seed + index), filled in parallel: reproducible anywhere, fast at any size.
#include <cmath>
#include <thread>
#include <vector>

#include "blas.hpp"
#include "tilemoe/moe_layer.hpp"

namespace tilemoe {
namespace {

std::uint64_t mix(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

template <class T, class Conv>
void fill(T* p, std::int64_t n, float sd, std::uint64_t seed, Conv conv) {
  // uniform(-sqrt(3), sqrt(3)) has variance 1; 2^-31 maps the hash's upper 32 bits to [-1, 1).
  const double scale = static_cast<double>(sd) * 1.7320508075688772 / 2147483648.0;
  const std::uint64_t base = mix(seed + 0x632be59bd9b4e019ull);
  const int threads = static_cast<int>(std::min<std::int64_t>(detail::hardware_threads(), 1 + n / 65536));
  auto work = [=](int i) {
    for (std::int64_t j = n * i / threads; j < n * (i + 1) / threads; ++j) {
      const std::uint64_t z = mix(base + static_cast<std::uint64_t>(j) * 0x9e3779b97f4a7c15ull);
      p[j] = conv(static_cast<double>(static_cast<std::int32_t>(z >> 32)) * scale);
    }
  };
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back(work, i);
  work(0);
  for (auto& t : pool) t.join();
}

}  // namespace

Tensor random_uniform(Shape shape, DType dtype, float sd, std::uint64_t seed) {
  Tensor t = Tensor::empty(std::move(shape), dtype);
  switch (dtype) {
    case DType::f32: fill(t.data<float>(), t.numel(), sd, seed, [](double v) { return static_cast<float>(v); }); break;
    case DType::bf16: fill(t.data<bf16>(), t.numel(), sd, seed, [](double v) { return bf16::from_float(static_cast<float>(v)); }); break;
    case DType::f64: fill(t.data<double>(), t.numel(), sd, seed, [](double v) { return v; }); break;
    default:
      throw InvalidArgument(detail::concat("dtype = ", to_string(dtype), ": expected fp32, bf16 or fp64"));
  }
  return t;
}

MoeWeights random_weights(const MoeConfig& cfg, DType dtype, std::uint64_t seed) {
  cfg.validate();
  check_arg(dtype == DType::f32 || dtype == DType::bf16, "dtype", to_string(dtype), "fp32 or bf16");
  const std::int64_t E = cfg.num_experts, d = cfg.d_model, n = cfg.d_expert;
  const std::int64_t rows = is_gated(cfg.activation) ? 2 * n : n;
  const float sd = 1.0f / std::sqrt(static_cast<float>(d));
  const float sn = 1.0f / std::sqrt(static_cast<float>(n));
  const std::uint64_t s = seed * 8;  // one stream per tensor
  MoeWeights w;
  w.router = random_uniform({E, d}, DType::f32, sd, s + 0);
  if (cfg.router_bias) w.router_bias = random_uniform({E}, DType::f32, 0.01f, s + 1);
  w.w13 = random_uniform({E, rows, d}, dtype, sd, s + 2);
  w.w2 = random_uniform({E, d, n}, dtype, sn, s + 3);
  if (cfg.num_shared > 0) {
    const std::int64_t ns = cfg.d_shared, srows = is_gated(cfg.activation) ? 2 * ns : ns;
    w.shared_w13 = random_uniform({cfg.num_shared, srows, d}, dtype, sd, s + 4);
    w.shared_w2 = random_uniform({cfg.num_shared, d, ns}, dtype, 1.0f / std::sqrt(static_cast<float>(ns)), s + 5);
  }
  return w;
}

Tensor random_tokens(std::int64_t T, std::int64_t d, DType dtype, std::uint64_t seed) {
  check_arg(T >= 1, "tokens", T, ">= 1");
  check_arg(d >= 1, "d_model", d, ">= 1");
  return random_uniform({T, d}, dtype, 1.0f, seed * 8 + 7);
}

}  // namespace tilemoe
