// Combine on the GPU: out[t] = sum_{a of t} weight[a] * y[slot[a]] + sum_s y_shared[s*T + t],
// a gather-sum per token in fp32 (deterministic, no atomics). Each thread owns 8 consecutive
// columns of one token (16-byte loads of bf16 y when rows are aligned); the threads cover the
// (token, chunk) items grid-stride, or a block covers a token (heuristics.hpp).
#include <algorithm>
#include <cuda_bf16.h>

#include "context.cuh"
#include "heuristics.hpp"
#include "stages.hpp"

namespace tilemoe::detail::gpu {
namespace {

__device__ __forceinline__ float ld(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float ld(const float* p) { return *p; }

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

template <class Y, bool kVec>
__device__ __forceinline__ void add_row(float (&acc)[8], const Y* row, std::int64_t c0, std::int64_t d, float w) {
  if constexpr (kVec && sizeof(Y) == 2) {
    add_bf16x8(acc, *reinterpret_cast<const uint4*>(row + c0), w);
  } else if constexpr (kVec) {
    const float4 a = *reinterpret_cast<const float4*>(row + c0);
    const float4 b = *reinterpret_cast<const float4*>(row + c0 + 4);
    acc[0] += w * a.x; acc[1] += w * a.y; acc[2] += w * a.z; acc[3] += w * a.w;
    acc[4] += w * b.x; acc[5] += w * b.y; acc[6] += w * b.z; acc[7] += w * b.w;
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i)
      if (c0 + i < d) acc[i] += w * ld(row + c0 + i);
  }
}

// Token t's columns c0 .. c0 + 7: the gather-sum of its rows of y, its shared experts' rows, and
// the store into out.
template <class Y, bool kVec>
__device__ __forceinline__ void combine_chunk(const Y* __restrict__ y, const Y* __restrict__ ys, int S,
                                              const float* __restrict__ weight, const std::int32_t* __restrict__ slot,
                                              std::int64_t a0, std::int64_t a1, std::int64_t t, std::int64_t c0,
                                              std::int64_t T, std::int64_t d, void* __restrict__ out, bool out_bf16) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t a = a0;
  if constexpr (kVec && sizeof(Y) == 2) {
    // Rows in groups of kBatch: their loads are all issued before the first add, so a thread
    // has kBatch 16-byte loads in flight instead of one (the sums keep the order a0, a0 + 1,
    // ..., so the result is the same to the bit).
    constexpr int kBatch = 4;
    for (; a + kBatch <= a1; a += kBatch) {
      uint4 v[kBatch];
      float w[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        v[j] = *reinterpret_cast<const uint4*>(y + std::int64_t(slot[a + j]) * d + c0);
        w[j] = weight[a + j];
      }
#pragma unroll
      for (int j = 0; j < kBatch; ++j) add_bf16x8(acc, v[j], w[j]);
    }
  }
  for (; a < a1; ++a) add_row<Y, kVec>(acc, y + std::int64_t(slot[a]) * d, c0, d, weight[a]);
  for (int s = 0; s < S; ++s) add_row<Y, kVec>(acc, ys + (std::int64_t(s) * T + t) * d, c0, d, 1.0f);
  if (out_bf16) {
    __nv_bfloat16* o = static_cast<__nv_bfloat16*>(out) + t * d + c0;
    if (kVec) {
      uint4 v;
      __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&v);
#pragma unroll
      for (int j = 0; j < 4; ++j) h[j] = __floats2bfloat162_rn(acc[2 * j], acc[2 * j + 1]);
      *reinterpret_cast<uint4*>(o) = v;
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (c0 + j < d) o[j] = __float2bfloat16_rn(acc[j]);
    }
  } else {
    float* o = static_cast<float*>(out) + t * d + c0;
    if (kVec) {
      *reinterpret_cast<float4*>(o) = make_float4(acc[0], acc[1], acc[2], acc[3]);
      *reinterpret_cast<float4*>(o + 4) = make_float4(acc[4], acc[5], acc[6], acc[7]);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (c0 + j < d) o[j] = acc[j];
    }
  }
}

// A thread per (token, 8 columns), grid-stride over all of them.
template <class Y, bool kVec>
__global__ void combine_kernel(const Y* __restrict__ y, const Y* __restrict__ ys, int S, const float* __restrict__ weight,
                               const std::int32_t* __restrict__ slot, const std::int64_t* __restrict__ token_offsets,
                               int K, std::int64_t T, std::int64_t d, void* __restrict__ out, bool out_bf16) {
  const std::int64_t chunks = (d + 7) / 8;
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < T * chunks;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t t = i / chunks, c0 = (i - t * chunks) * 8;
    const std::int64_t a0 = token_offsets ? token_offsets[t] : t * K;
    const std::int64_t a1 = token_offsets ? token_offsets[t + 1] : a0 + K;
    combine_chunk<Y, kVec>(y, ys, S, weight, slot, a0, a1, t, c0, T, d, out, out_bf16);
  }
}

// A block per token (grid-stride over the tokens), its threads over the token's 8-column chunks:
// no 64-bit division per item, the token's range of assignments found once per block.
template <class Y, bool kVec>
__global__ void combine_token_kernel(const Y* __restrict__ y, const Y* __restrict__ ys, int S,
                                     const float* __restrict__ weight, const std::int32_t* __restrict__ slot,
                                     const std::int64_t* __restrict__ token_offsets, int K, std::int64_t T,
                                     std::int64_t d, void* __restrict__ out, bool out_bf16) {
  const int chunks = static_cast<int>((d + 7) / 8);
  for (std::int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    const std::int64_t a0 = token_offsets ? token_offsets[t] : t * K;
    const std::int64_t a1 = token_offsets ? token_offsets[t + 1] : a0 + K;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x)
      combine_chunk<Y, kVec>(y, ys, S, weight, slot, a0, a1, t, std::int64_t(c) * 8, T, d, out, out_bf16);
  }
}

template <class Y>
void launch(const Y* y, const Y* ys, int S, const float* weight, const std::int32_t* slot,
            const std::int64_t* token_offsets, int K, std::int64_t T, std::int64_t d, void* out, bool out_bf16) {
  const bool vec = d % 8 == 0 && (reinterpret_cast<std::uintptr_t>(y) & 15) == 0 &&
                   (reinterpret_cast<std::uintptr_t>(ys) & 15) == 0 &&
                   (reinterpret_cast<std::uintptr_t>(out) & 15) == 0;
  const std::int64_t chunks = (d + 7) / 8, items = T * chunks;
  // Block per token: the token's chunks rounded up to whole warps, at most 512 threads; blocks:
  // 4096 threads' worth per SM (as below), at most one per token.
  const int threads = static_cast<int>(std::min<std::int64_t>(512, (chunks + 31) / 32 * 32));
  if (combine_block_per_token(T, d, std::int64_t(device_props().sm_count) * (2048 / threads))) {
    const int blocks = static_cast<int>(
        std::max<std::int64_t>(1, std::min<std::int64_t>(T, std::int64_t(device_props().sm_count) * 4096 / threads)));
    if (vec)
      combine_token_kernel<Y, true><<<blocks, threads, 0, current_stream()>>>(y, ys, S, weight, slot, token_offsets, K,
                                                                              T, d, out, out_bf16);
    else
      combine_token_kernel<Y, false><<<blocks, threads, 0, current_stream()>>>(y, ys, S, weight, slot, token_offsets,
                                                                               K, T, d, out, out_bf16);
    TILEMOE_CHECK_LAUNCH();
    return;
  }
  const int blocks = static_cast<int>(std::max<std::int64_t>(
      1, std::min<std::int64_t>((items + 255) / 256, std::int64_t(device_props().sm_count) * 16)));
  if (vec)
    combine_kernel<Y, true><<<blocks, 256, 0, current_stream()>>>(y, ys, S, weight, slot, token_offsets, K, T, d, out, out_bf16);
  else
    combine_kernel<Y, false><<<blocks, 256, 0, current_stream()>>>(y, ys, S, weight, slot, token_offsets, K, T, d, out, out_bf16);
  TILEMOE_CHECK_LAUNCH();
}

}  // namespace

void combine(const void* y, bool y_bf16, const void* y_shared, int S, const float* weight, const std::int32_t* slot,
             const std::int64_t* token_offsets, int K, std::int64_t T, std::int64_t d, void* out, bool out_bf16) {
  if (T == 0 || d == 0) return;
  if (!y_shared) S = 0;
  if (y_bf16)
    launch(static_cast<const __nv_bfloat16*>(y), static_cast<const __nv_bfloat16*>(y_shared), S, weight, slot,
           token_offsets, K, T, d, out, out_bf16);
  else
    launch(static_cast<const float*>(y), static_cast<const float*>(y_shared), S, weight, slot, token_offsets, K, T,
           d, out, out_bf16);
}

}  // namespace tilemoe::detail::gpu
