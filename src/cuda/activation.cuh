// The expert activations on the device: the functions of src/core/activation.hpp in fp32, each
// written as x * sigmoid(z) with the hardware's approximate exponential and reciprocal
// (ex2.approx, rcp.approx: a few fp32 ulp, far below the bf16 rounding of the GEMM epilogues'
// outputs) instead of expf, tanhf and an IEEE division (some 15 instructions an element more,
// in epilogues that the tensor cores wait for). GELU's tanh form is the same function:
// 0.5 (1 + tanh z) = sigmoid(2 z).
#pragma once
#include "tilemoe/config.hpp"

namespace tilemoe::detail::gpu {

// x * sigmoid(z) = x / (1 + e^-z); e^-z past fp32's range gives x / inf = 0, the limit.
__device__ __forceinline__ float mul_sigmoid(float x, float z) { return __fdividef(x, 1.0f + __expf(-z)); }

__device__ __forceinline__ float act_silu(float x) { return mul_sigmoid(x, x); }
__device__ __forceinline__ float act_gelu_tanh(float x) {
  const float two_c = 1.5957691216057308f;  // 2 sqrt(2 / pi)
  return mul_sigmoid(x, two_c * (x + 0.044715f * x * x * x));
}

__device__ __forceinline__ float activate(Activation a, float gate, float up) {
  switch (a) {
    case Activation::swiglu: return act_silu(gate) * up;
    case Activation::geglu: return act_gelu_tanh(gate) * up;
    case Activation::gelu: return act_gelu_tanh(gate);
    case Activation::relu: return fmaxf(gate, 0.0f);
    case Activation::clamped_swiglu: {
      const float g = fminf(gate, 7.0f), u = fminf(fmaxf(up, -7.0f), 7.0f);
      return (u + 1.0f) * mul_sigmoid(g, 1.702f * g);
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
