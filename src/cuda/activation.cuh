// The expert activations on the device, the same formulas as src/core/activation.hpp in fp32.
#pragma once
#include "tilemoe/config.hpp"

namespace tilemoe::detail::gpu {

__device__ __forceinline__ float act_silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float act_gelu_tanh(float x) {
  const float c = 0.7978845608028654f;
  return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

__device__ __forceinline__ float activate(Activation a, float gate, float up) {
  switch (a) {
    case Activation::swiglu: return act_silu(gate) * up;
    case Activation::geglu: return act_gelu_tanh(gate) * up;
    case Activation::gelu: return act_gelu_tanh(gate);
    case Activation::relu: return fmaxf(gate, 0.0f);
    case Activation::clamped_swiglu: {
      const float g = fminf(gate, 7.0f), u = fminf(fmaxf(up, -7.0f), 7.0f);
      return (u + 1.0f) * g / (1.0f + expf(-1.702f * g));
    }
  }
  return 0.0f;
}

// A gated activation fixed at compile time (the GEMM epilogues' hot loops: a run-time switch
// there, unrolled 64 times, made the code large enough for instruction-fetch stalls).
inline constexpr bool gated_fixed(Activation a) {
  return a == Activation::swiglu || a == Activation::geglu || a == Activation::clamped_swiglu;
}
template <Activation kAct>
__device__ __forceinline__ float activate_gated(float gate, float up) {
  static_assert(gated_fixed(kAct), "a gated activation");
  if constexpr (kAct == Activation::swiglu) return act_silu(gate) * up;
  else if constexpr (kAct == Activation::geglu) return act_gelu_tanh(gate) * up;
  else return activate(Activation::clamped_swiglu, gate, up);
}

}  // namespace tilemoe::detail::gpu
