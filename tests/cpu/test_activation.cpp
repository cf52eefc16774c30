// The CPU activations' exp (detail::exp_fast) against std::exp in double, its limits (overflow to
// inf, underflow to 0, NaN), and the fp32 activations against their float64 reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/activation.hpp"

using tilemoe::detail::exp_fast;

namespace {

// |f - ref| in units of the float spacing at ref (subnormal spacing 2^-149 below 2^-126).
double ulp_error(float f, double ref) {
  const double ulp = std::ldexp(1.0, std::max(std::ilogb(ref), -126) - 23);
  return std::fabs(static_cast<double>(f) - ref) / ulp;
}

// The largest ulp error of exp_fast over the floats of [lo, hi] (lo < 0 < hi), every `stride`-th
// bit pattern on each side of 0 and every one within `edge` patterns of lo and hi.
double max_ulp_error(float lo, float hi, std::uint32_t stride, std::uint32_t edge) {
  double worst = 0;
  auto check = [&](float x) {
    const double ref = std::exp(static_cast<double>(x));
    if (ref > std::numeric_limits<float>::max()) return;  // inf, checked in Limits
    worst = std::max(worst, ulp_error(exp_fast(x), ref));
  };
  for (float end : {lo, hi}) {
    const std::uint32_t last = std::bit_cast<std::uint32_t>(std::fabs(end));
    for (std::uint32_t b = 0; b <= last; b += stride) check(std::copysign(std::bit_cast<float>(b), end));
    for (std::uint32_t b = last - edge; b <= last; ++b) check(std::copysign(std::bit_cast<float>(b), end));
  }
  return worst;
}

}  // namespace

// Every float of [-104, 89] gave at most 0.99 ulp (an exhaustive run, ~2 minutes); std::exp in
// float gives 0.5. Sampled here, with a margin for compilers that contract into FMA.
TEST(ExpFast, MatchesStdExpWithinOneAndAHalfUlp) {
  const double worst = max_ulp_error(-104.0f, 89.0f, 97, 1u << 16);
  EXPECT_LE(worst, 1.5);
  RecordProperty("max_ulp", std::to_string(worst));
  // Around the overflow threshold (88.72) and the start of the subnormal range (-87.34).
  EXPECT_LE(max_ulp_error(-87.5f, 88.7228f, 1u << 12, 1u << 18), 1.5);
}

TEST(ExpFast, LimitsLikeStdExp) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(exp_fast(0.0f), 1.0f);
  EXPECT_EQ(exp_fast(inf), inf);
  EXPECT_EQ(exp_fast(1000.0f), inf);
  EXPECT_EQ(exp_fast(88.73f), inf);  // above log(FLT_MAX) = 88.7228
  EXPECT_TRUE(std::isfinite(exp_fast(88.72f)));
  EXPECT_EQ(exp_fast(-inf), 0.0f);
  EXPECT_EQ(exp_fast(-1000.0f), 0.0f);
  EXPECT_EQ(exp_fast(-104.0f), 0.0f);
  EXPECT_GT(exp_fast(-103.0f), 0.0f);  // subnormal, as std::exp gives it
  EXPECT_LE(ulp_error(exp_fast(-103.0f), std::exp(-103.0)), 1.0);
  EXPECT_TRUE(std::isnan(exp_fast(std::numeric_limits<float>::quiet_NaN())));
}

// Far out, the activations saturate as in double: x for large x, -0 (never NaN) for large -x.
TEST(Activations, SaturateWithoutNaN) {
  using namespace tilemoe::detail;
  for (float x : {-100.0f, -1e4f, -1e30f}) {
    EXPECT_EQ(silu(x), 0.0f) << x;
    EXPECT_EQ(gelu_tanh(x), 0.0f) << x;
    EXPECT_EQ(clamped_swiglu(x, 1.0f), 0.0f) << x;
  }
  for (float x : {100.0f, 1e4f, 1e30f}) {
    EXPECT_EQ(silu(x), x) << x;
    EXPECT_EQ(gelu_tanh(x), x) << x;
  }
}

// The fp32 activations against the float64 ones, every 2^-10 over [-30, 30] and beyond: relative
// error under 1e-5 (the bound of the fp32 forward against the float64 reference, test_forward),
// or under 1e-30 absolute where the result underflows.
TEST(Activations, MatchFloat64Reference) {
  using tilemoe::Activation;
  using tilemoe::detail::activate;
  double worst = 0;
  for (Activation a : {Activation::swiglu, Activation::geglu, Activation::gelu, Activation::relu,
                       Activation::clamped_swiglu})
    for (double g = -120.0; g <= 120.0; g += (std::fabs(g) < 30 ? 1.0 / 1024 : 0.25))
      for (double u : {-3.0, 0.5, 9.0}) {
        const float gf = static_cast<float>(g), uf = static_cast<float>(u);
        const double ref = activate<double>(a, gf, uf);
        const double err = std::fabs(activate<float>(a, gf, uf) - ref);
        if (std::fabs(ref) > 1e-30) worst = std::max(worst, err / std::fabs(ref));
        ASSERT_LE(err, std::max(1e-5 * std::fabs(ref), 1e-30))
            << "activation " << static_cast<int>(a) << " gate " << g << " up " << u;
      }
  RecordProperty("max_relative_error", std::to_string(worst));
}
