// Router on the GPU. Logits by cuBLAS (fp32 for fp32 x; for bf16 x, three bf16 GEMMs over a
// hi/mid/lo split of the fp32 router weights, fp32-accurate); then one fused kernel for scores,
// top-k and weights of every RouterKind: a warp per token, the token's E scores in shared
// memory, K rounds of a warp arg-max over (score, -index) so that ties go to the lower index,
// as on the CPU. E up to 4096 (shared memory permitting), K up to E.
#include <algorithm>
#include <cfloat>
#include <climits>
#include <cuda_bf16.h>

#include "context.cuh"
#include "stages.hpp"

namespace tilemoe::detail::gpu {
namespace {

// w = hi + mid + lo, each bf16 (parts [3][n]).
__global__ void split_bf16x3_kernel(const float* __restrict__ w, std::int64_t n, __nv_bfloat16* __restrict__ parts) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const float v = w[i];
    const __nv_bfloat16 hi = __float2bfloat16_rn(v);
    const float r1 = v - __bfloat162float(hi);
    const __nv_bfloat16 mid = __float2bfloat16_rn(r1);
    const float r2 = r1 - __bfloat162float(mid);
    parts[i] = hi;
    parts[n + i] = mid;
    parts[2 * n + i] = __float2bfloat16_rn(r2);
  }
}

// (v, i) beats (bv, bi) when larger, or equal with a lower index.
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi);
}

// Arg-max over v[0..n) of the entries with ok(i); every lane gets the winner.
template <class Ok>
__device__ __forceinline__ int warp_argmax(const float* v, int n, Ok ok) {
  const int lane = threadIdx.x & 31;
  float bv = -INFINITY;
  int bi = INT_MAX;
  for (int i = lane; i < n; i += 32)
    if (ok(i) && better(v[i], i, bv, bi)) {
      bv = v[i];
      bi = i;
    }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (better(ov, oi, bv, bi)) {
      bv = ov;
      bi = oi;
    }
  }
  return bi;
}

// exp rounded once from double: glibc's expf is correctly rounded in nearly all cases, CUDA's
// expf is not (2 ulp), and exact scores keep the CPU's tie decisions.
__device__ __forceinline__ float exp_cr(float x) { return static_cast<float>(exp(static_cast<double>(x))); }

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// v[0] + v[1] + ... in this order, as the CPU's loop adds them (so the fp32 sums agree to the
// bit): lane 0 adds, every lane gets the sum. E adds per token, a small cost next to the GEMMs.
__device__ __forceinline__ float sequential_sum(const float* v, int n) {
  float s = 0.0f;
  if ((threadIdx.x & 31) == 0)
    for (int i = 0; i < n; ++i) s += v[i];
  return __shfl_sync(0xffffffffu, s, 0);
}

struct TopkParams {
  RouterKind kind;
  int E, K, n_groups, topk_groups;
  bool renormalize;
  float scale;
};

// Shared memory per warp: s[E] (logits or sigmoid scores), c[E] (choice scores), g[G] (group
// scores), taken[E], keep[G].
__host__ __device__ inline std::size_t topk_smem_per_warp(int E, int G) {
  return (std::size_t(2) * E + G) * sizeof(float) + ((std::size_t(E) + G + 15) / 16) * 16;
}

__global__ void topk_kernel(TopkParams p, const float* __restrict__ logits, const float* __restrict__ bias,
                            std::int64_t T, std::int32_t* __restrict__ ids, float* __restrict__ weights) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int nwarps = blockDim.x >> 5;
  const int E = p.E, K = p.K, G = p.n_groups;
  unsigned char* base = smem + warp * topk_smem_per_warp(E, G);
  float* s = reinterpret_cast<float*>(base);
  float* c = s + E;
  float* gs = c + E;
  unsigned char* taken = reinterpret_cast<unsigned char*>(gs + G);
  unsigned char* keep = taken + E;
  const float NEG_INF = -INFINITY;

  for (std::int64_t t = blockIdx.x * std::int64_t(nwarps) + warp; t < T; t += std::int64_t(gridDim.x) * nwarps) {
    const float* l = logits + t * E;
    for (int e = lane; e < E; e += 32) {
      s[e] = l[e];
      taken[e] = 0;
    }
    __syncwarp();
    float wk = 0.0f;  // lane k < K holds weight k
    int ik = 0;
    if (p.kind == RouterKind::sigmoid_group_topk) {
      for (int e = lane; e < E; e += 32) {
        const float sc = 1.0f / (1.0f + exp_cr(-s[e]));
        s[e] = sc;
        c[e] = sc + (bias ? bias[e] : 0.0f);
      }
      __syncwarp();
      const int gsz = E / G;
      for (int g = lane; g < G; g += 32) {  // the two best choice scores of each group
        const float* cg = c + g * gsz;
        float b0 = NEG_INF, b1 = NEG_INF;
        int i0 = INT_MAX, i1 = INT_MAX;
        for (int j = 0; j < gsz; ++j) {
          if (better(cg[j], j, b0, i0)) {
            b1 = b0; i1 = i0; b0 = cg[j]; i0 = j;
          } else if (better(cg[j], j, b1, i1)) {
            b1 = cg[j]; i1 = j;
          }
        }
        gs[g] = gsz >= 2 ? b0 + b1 : b0;
        keep[g] = p.topk_groups < G ? 0 : 1;
      }
      __syncwarp();
      if (p.topk_groups < G) {
        for (int r = 0; r < p.topk_groups; ++r) {
          const int g = warp_argmax(gs, G, [&](int i) { return keep[i] == 0; });
          if (lane == 0) keep[g] = 1;
          __syncwarp();
        }
      }
      for (int k = 0; k < K; ++k) {
        const int e = warp_argmax(c, E, [&](int i) { return taken[i] == 0 && keep[i / gsz]; });
        if (lane == 0) taken[e] = 1;
        __syncwarp();
        if (lane == k) { ik = e; wk = s[e]; }
      }
    } else {
      float m = NEG_INF;
      for (int e = lane; e < E; e += 32) m = fmaxf(m, s[e]);
      m = warp_max(m);
      float sum = 0.0f;
      if (p.kind != RouterKind::topk_softmax) {
        for (int e = lane; e < E; e += 32) c[e] = exp_cr(s[e] - m);
        __syncwarp();
        sum = sequential_sum(c, E);
      }
      for (int k = 0; k < K; ++k) {
        const int e = warp_argmax(s, E, [&](int i) { return taken[i] == 0; });
        if (lane == 0) taken[e] = 1;
        __syncwarp();
        if (lane == k) {
          ik = e;
          wk = p.kind == RouterKind::topk_softmax ? s[e] : c[e] / sum;
        }
      }
    }
    // Final weights, sequential over k in one lane like the CPU's loops.
    const float w_all = wk;
    if (p.kind == RouterKind::topk_softmax) {
      float mk = NEG_INF;
      for (int k = 0; k < K; ++k) mk = fmaxf(mk, __shfl_sync(0xffffffffu, w_all, k));
      const float ek = exp_cr(wk - mk);
      float sk = 0.0f;
      for (int k = 0; k < K; ++k) sk += __shfl_sync(0xffffffffu, ek, k);
      wk = ek / sk;
    } else if (p.renormalize && p.kind != RouterKind::top1) {
      float sk = 0.0f;
      for (int k = 0; k < K; ++k) sk += __shfl_sync(0xffffffffu, w_all, k);
      wk = wk / sk;
    }
    if (lane < K) {
      ids[t * K + lane] = ik;
      weights[t * K + lane] = wk * p.scale;
    }
    __syncwarp();
  }
}

__global__ void probs_kernel(RouterKind kind, int E, const float* __restrict__ logits, std::int64_t T,
                             float* __restrict__ probs) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  for (std::int64_t t = blockIdx.x * std::int64_t(nwarps) + warp; t < T; t += std::int64_t(gridDim.x) * nwarps) {
    const float* l = logits + t * E;
    float* o = probs + t * E;
    if (kind == RouterKind::sigmoid_group_topk) {
      for (int e = lane; e < E; e += 32) o[e] = 1.0f / (1.0f + exp_cr(-l[e]));
      continue;
    }
    float m = -INFINITY;
    for (int e = lane; e < E; e += 32) m = fmaxf(m, l[e]);
    m = warp_max(m);
    for (int e = lane; e < E; e += 32) o[e] = exp_cr(l[e] - m);
    __syncwarp();
    const float sum = sequential_sum(o, E);
    for (int e = lane; e < E; e += 32) o[e] = o[e] / sum;
    __syncwarp();
  }
}

int grid_for(std::int64_t items, int per_block) {
  const std::int64_t want = (items + per_block - 1) / per_block;
  const std::int64_t cap = std::int64_t(device_props().sm_count) * 32;
  return static_cast<int>(std::max<std::int64_t>(1, std::min(want, cap)));
}

}  // namespace

std::size_t router_scratch_bytes(std::int64_t T, std::int64_t d, int E, bool x_bf16) {
  (void)T;
  return x_bf16 ? static_cast<std::size_t>(3 * E * d) * sizeof(__nv_bfloat16) : 0;
}

void router_logits(const void* x, bool x_bf16, const float* w, std::int64_t T, std::int64_t d, int E,
                   float* logits, void* scratch) {
  const float one = 1.0f, zero = 0.0f;
  cublasHandle_t h = cublas_handle();
  if (!x_bf16) {
    // Row-major logits [T, E] is column-major [E, T] = w (col-major [d, E])^T . x (col-major [d, T]).
    TILEMOE_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, E, static_cast<int>(T), static_cast<int>(d), &one,
                                      w, CUDA_R_32F, static_cast<int>(d), x, CUDA_R_32F, static_cast<int>(d), &zero,
                                      logits, CUDA_R_32F, E, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return;
  }
  // x is exact in bf16; w = hi + mid + lo in bf16 to within fp32 rounding, so three bf16 tensor
  // core GEMMs accumulating in fp32 give fp32-accurate logits at a fraction of an fp32 GEMM.
  __nv_bfloat16* parts = static_cast<__nv_bfloat16*>(scratch);
  const std::int64_t n = std::int64_t(E) * d;
  split_bf16x3_kernel<<<grid_for(n, 256 * 4), 256, 0, current_stream()>>>(w, n, parts);
  TILEMOE_CHECK_LAUNCH();
  for (int i = 0; i < 3; ++i) {
    const float beta = i == 0 ? zero : one;
    TILEMOE_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, E, static_cast<int>(T), static_cast<int>(d), &one,
                                      parts + i * n, CUDA_R_16BF, static_cast<int>(d), x, CUDA_R_16BF,
                                      static_cast<int>(d), &beta, logits, CUDA_R_32F, E, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT));
  }
}

void router_topk(const RouterConfig& rc, const float* logits, const float* bias, std::int64_t T,
                 std::int32_t* ids, float* weights) {
  check_arg(rc.top_k <= 32, "top_k", rc.top_k, "<= 32 on the GPU router");
  if (T == 0) return;
  TopkParams p{rc.kind, rc.num_experts, rc.top_k, rc.kind == RouterKind::sigmoid_group_topk ? rc.n_groups : 1,
               rc.topk_groups, rc.renormalize, rc.routed_scale};
  const std::size_t per_warp = topk_smem_per_warp(p.E, p.n_groups);
  const std::size_t limit = device_props().smem_optin;
  check_arg(per_warp <= limit, "num_experts", p.E, "small enough for the router's shared memory");
  const int warps = static_cast<int>(std::clamp<std::size_t>((48 * 1024) / per_warp, 1, 8));
  const std::size_t smem = per_warp * warps;
  if (smem > 48 * 1024)
    TILEMOE_CUDA_CHECK(cudaFuncSetAttribute(topk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem)));
  topk_kernel<<<grid_for(T, warps), warps * 32, smem, current_stream()>>>(p, logits, bias, T, ids, weights);
  TILEMOE_CHECK_LAUNCH();
}

void router_probs(const RouterConfig& rc, const float* logits, std::int64_t T, float* probs) {
  if (T == 0) return;
  probs_kernel<<<grid_for(T, 8), 256, 0, current_stream()>>>(rc.kind, rc.num_experts, logits, T, probs);
  TILEMOE_CHECK_LAUNCH();
}

}  // namespace tilemoe::detail::gpu
