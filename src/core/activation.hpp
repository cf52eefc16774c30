// The expert activations, one definition for every CPU path (fp32 and the float64 reference).
#pragma once
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#include "tilemoe/config.hpp"

namespace tilemoe::detail {

// exp(x) in float without a libm call, so that a loop applying an activation over a float array
// vectorizes (GCC -O3: SSE2 in the portable x86-64 build), where std::exp is one scalar call per
// element (~75 ms per worker of a ~2.6 s qwen3-30b-a3b T 4096 forward). Straight-line code, no
// branches: the result of each element does not depend on how many lanes run at once.
// Cephes' expf scheme: x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts, the first with few
// enough bits that n * ln2_hi is exact), a degree-7 polynomial for e^r, and 2^n written into
// exponent bits in two halves, so that subnormal results (x down to -103.97) are rounded once
// as std::exp rounds them and x above 88.72 gives inf. x is clamped first, keeping n in
// [-150, 128]: below -104 the result is 0, above 89 inf, as with std::exp; NaN stays NaN.
// Measured against std::exp in double over [-104, 89] (tests/cpu/test_activation.cpp):
// at most 1.5 ulp of the float result (std::exp in float: 0.5 ulp).
inline float exp_fast(float x) {
  x = std::clamp(x, -104.0f, 89.0f);
  const float shift = 0x1.8p23f;                // adding it rounds to an integer, kept in the
  const float t = x * 1.44269504088896341f + shift;  // low mantissa bits of t
  const float n = t - shift;                    // round(x / ln2)
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const std::int32_t ni = std::bit_cast<std::int32_t>(t) - std::bit_cast<std::int32_t>(shift);
  const std::int32_t half = ni >> 1;
  const float s1 = std::bit_cast<float>((half + 127) << 23);       // 2^half
  const float s2 = std::bit_cast<float>((ni - half + 127) << 23);  // 2^(n - half)
  return p * s1 * s2;
}

// The exp of the activations: exp_fast in float, std::exp in the float64 reference.
inline float act_exp(float x) { return exp_fast(x); }
inline double act_exp(double x) { return std::exp(x); }

// The tanh approximation of gelu, 0.5 x (1 + tanh(y)) with y = sqrt(2/pi) (x + 0.044715 x^3),
// written as the equal x * sigmoid(2y): one exp, and no cancellation in 1 + tanh(y) for x < 0.
template <class Real>
inline Real gelu_tanh(Real x) {
  const Real c = Real(2 * 0.7978845608028654);  // 2 sqrt(2 / pi)
  return x / (Real(1) + act_exp(-c * (x + Real(0.044715) * x * x * x)));
}

template <class Real>
inline Real silu(Real x) { return x / (Real(1) + act_exp(-x)); }

// gpt-oss: alpha 1.702, limit 7, (up + 1) * gate * sigmoid(alpha * gate).
template <class Real>
inline Real clamped_swiglu(Real gate, Real up) {
  const Real limit = Real(7), alpha = Real(1.702);
  gate = std::min(gate, limit);
  up = std::clamp(up, -limit, limit);
  return (up + Real(1)) * gate / (Real(1) + act_exp(-alpha * gate));
}

// Gated activations read (gate, up); plain ones read gate only.
template <class Real>
inline Real activate(Activation a, Real gate, Real up) {
  switch (a) {
    case Activation::swiglu: return silu(gate) * up;
    case Activation::geglu: return gelu_tanh(gate) * up;
    case Activation::gelu: return gelu_tanh(gate);
    case Activation::relu: return std::max(gate, Real(0));
    case Activation::clamped_swiglu: return clamped_swiglu(gate, up);
  }
  return Real(0);
}

}  // namespace tilemoe::detail
