// The expert activations, one definition for every CPU path (fp32 and the float64 reference).
#pragma once
#include <algorithm>
#include <cmath>

#include "tilemoe/config.hpp"

namespace tilemoe::detail {

template <class Real>
inline Real gelu_tanh(Real x) {
  const Real c = Real(0.7978845608028654);  // sqrt(2 / pi)
  return Real(0.5) * x * (Real(1) + std::tanh(c * (x + Real(0.044715) * x * x * x)));
}

template <class Real>
inline Real silu(Real x) { return x / (Real(1) + std::exp(-x)); }

// gpt-oss: alpha 1.702, limit 7, (up + 1) * gate * sigmoid(alpha * gate).
template <class Real>
inline Real clamped_swiglu(Real gate, Real up) {
  const Real limit = Real(7), alpha = Real(1.702);
  gate = std::min(gate, limit);
  up = std::clamp(up, -limit, limit);
  return (up + Real(1)) * gate / (Real(1) + std::exp(-alpha * gate));
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
