// The combine's arithmetic, shared by combine.cu's kernel and the pair launch's epilogue
// (sm90/grouped_ws.cu), so that both add the same products in the same order: their outputs
// agree to the bit.
#pragma once
#include <cuda_bf16.h>

namespace tilemoe::detail::gpu {

// acc[i] += w * (8 bf16 values packed in v)[i].
__device__ __forceinline__ void add_bf16x8(float (&acc)[8], const uint4& v, float w) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    acc[2 * i] += w * f.x;
    acc[2 * i + 1] += w * f.y;
  }
}

// The 8 sums rounded to bf16, packed for one 16-byte store.
__device__ __forceinline__ uint4 pack_bf16x8(const float (&acc)[8]) {
  uint4 v;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&v);
#pragma unroll
  for (int j = 0; j < 4; ++j) h[j] = __floats2bfloat162_rn(acc[2 * j], acc[2 * j + 1]);
  return v;
}

}  // namespace tilemoe::detail::gpu
