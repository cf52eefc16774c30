// Router on the GPU. Logits in fp32 accuracy from the stored inputs: fp32 x by one fp32 cuBLAS
// GEMM (a bf16 router first widened to fp32); bf16 x either (decode sizes) by one CUDA-core kernel
// of fp32 dot products, or by one bf16 tensor-core GEMM: against the router itself where it is
// bf16, else over a hi/mid/lo split of the fp32 router weights stacked as [3E, d], whose three
// partial logits per expert the next kernels add in a fixed order. Then one fused kernel for
// scores, top-k and weights of every RouterKind: a warp per token, the token's E scores in shared
// memory, K rounds of a warp arg-max over (score, -index) so that ties go to the lower index,
// as on the CPU. E up to 4096 (shared memory permitting), K up to E.
#include <algorithm>
#include <cfloat>
#include <climits>
#include <cuda_bf16.h>
#include <type_traits>

#include "context.cuh"
#include "heuristics.hpp"
#include "stages.hpp"

namespace tilemoe::detail::gpu {
namespace {

// w = hi + mid + lo, each bf16 (parts [3][n]: with n = E d, the rows of a [3E, d] matrix).
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

// A bf16 router widened to fp32 (exact), for the fp32 GEMM of fp32 x.
__global__ void widen_bf16_kernel(const __nv_bfloat16* __restrict__ w, std::int64_t n, float* __restrict__ out) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    out[i] = __bfloat162float(w[i]);
}

// (v, i) beats (bv, bi) when larger, or equal with a lower index.
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi);
}

// A float as an unsigned key in the same order, equal values equal keys (-0 taken as +0). Not
// for NaN (better() never picks one).
__device__ __forceinline__ unsigned order_key(float v) {
  const unsigned u = __float_as_uint(v == 0.0f ? 0.0f : v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The best (value, index) over the warp's lanes by better(); every lane gets its index. Two warp
// reductions (redux.sync): the largest key, then the lowest index among the lanes that hold it.
// A lane without a candidate (bi = INT_MAX) holds key 0, below every value's (-inf's is
// 0x007fffff); with none anywhere the result is INT_MAX, as before. Until then five butterfly
// rounds of two shuffles and a comparison each: the top-k kernels' K rounds of it were most of
// their instructions (Nsight Compute, H200 run 91: topk_reg_kernel issue-bound, 62.5 us on
// sonic-7b T 24576 at 1.35 GHz).
__device__ __forceinline__ int warp_best(float bv, int bi) {
  const unsigned key = bi == INT_MAX ? 0u : order_key(bv);
  const unsigned top = __reduce_max_sync(0xffffffffu, key);
  return static_cast<int>(__reduce_min_sync(0xffffffffu, key == top ? static_cast<unsigned>(bi) : 0xffffffffu));
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
  return warp_best(bv, bi);
}

// exp rounded once from double: glibc's expf is correctly rounded in nearly all cases, CUDA's
// expf is not (2 ulp), and exact scores keep the CPU's tie decisions.
__device__ __forceinline__ float exp_cr(float x) { return static_cast<float>(exp(static_cast<double>(x))); }

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// The sum of the lanes' values, own + the partner's for partners 16, 8, 4, 2, 1 apart: every
// lane ends with the same sum, added in the order of the CPU's lane_order_sum
// (src/core/router.cpp), so the fp32 sums agree to the bit. Until then lane 0 added the E values
// one after another as the CPU's loop did: on a 256-expert softmax router a third of the top-k
// kernel's instructions.
__device__ __forceinline__ float lane_order_sum(float own) {
  for (int o = 16; o > 0; o >>= 1) own += __shfl_xor_sync(0xffffffffu, own, o);
  return own;
}
// v[0..n) in lane_order_sum's order: lane l adds v[l], v[l + 32], ... first.
__device__ __forceinline__ float lane_order_sum(const float* v, int n) {
  float own = 0.0f;
  for (int i = threadIdx.x & 31; i < n; i += 32) own += v[i];
  return lane_order_sum(own);
}

// Token row l of the logits: parts == 3 holds hi, mid and lo partial logits [3][E], added in
// this order (every kernel reading logits adds them the same way).
__device__ __forceinline__ float logit(const float* l, int E, int parts, int e) {
  return parts == 1 ? l[e] : (l[e] + l[E + e]) + l[2 * E + e];
}

constexpr int kSmallTok = 8, kSmallExp = 8, kSmallThreads = 256;
static_assert(kSmallTok * kSmallExp == 64, "the warp reduction below halves 64 values to 2 per lane");

// One step of a warp's reduction of 64 values per lane to 2 per lane: with v[0, N) live, a lane
// keeps one half (the upper where its lane bit N / 4 is set), adds its partner's copy of that half
// (lane ^ N / 4) and moves it to v[0, N / 2). After N = 64, 32, ..., 4 (offsets 16 .. 1), lane L
// holds the warp's sums of values 2L and 2L + 1: 62 shuffles where a butterfly per value takes
// 320. Fixed order: deterministic.
template <int N>
__device__ __forceinline__ void halve_over_warp(float (&v)[64], int lane) {
  constexpr int kHalf = N / 2, kOff = N / 4;
  const bool upper = (lane & kOff) != 0;
#pragma unroll
  for (int i = 0; i < kHalf; ++i) {
    const float send = upper ? v[i] : v[i + kHalf];
    const float keep = upper ? v[i + kHalf] : v[i];
    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, kOff);
  }
}

// Decode-size logits (up to router_small_tokens(), heuristics.hpp): a block of 256 threads per
// (8 tokens, 8 experts). Its threads stride d together in granules of kV elements (kV = 4: 8-byte
// x and 16-byte w loads, where d and the pointers allow; else 1), each holding the 8 x 8 partial
// dot products in registers, so every x and w element is loaded once per block. Then a fixed-order
// reduction: over each warp by halving (halve_over_warp), then the 8 warps in order
// (deterministic). W: the router's element type (float, or __nv_bfloat16: 8-byte loads of 4). One
// launch, no split of the weights. It replaced a block per (8 tokens, expert) with scalar loads,
// which reread x per expert: the router_logits stage (kernel plus the host's launch gap) on DeepSeek-V3 at T 64
// went from 0.074-0.080 ms (H100 run 40) to 0.031-0.040 (runs 41, 42; docs/gpu_runs.md).
template <int kV, class W>
__global__ void __launch_bounds__(kSmallThreads) logits_small_kernel(const __nv_bfloat16* __restrict__ x,
                                                                   const W* __restrict__ w, std::int64_t T,
                                                                   std::int64_t d, int E, float* __restrict__ logits) {
  __shared__ float red[kSmallThreads / 32][kSmallTok * kSmallExp];
  const std::int64_t t0 = std::int64_t(blockIdx.x) * kSmallTok;
  const int e0 = blockIdx.y * kSmallExp;
  const int nt = static_cast<int>(T - t0 < kSmallTok ? T - t0 : kSmallTok);
  const int ne = E - e0 < kSmallExp ? E - e0 : kSmallExp;
  float acc[kSmallTok * kSmallExp];  // token i, expert j at i * kSmallExp + j
#pragma unroll
  for (int i = 0; i < kSmallTok * kSmallExp; ++i) acc[i] = 0.0f;
  for (std::int64_t k = std::int64_t(threadIdx.x) * kV; k < d; k += kSmallThreads * kV) {
    float xv[kSmallTok][kV];
#pragma unroll
    for (int i = 0; i < kSmallTok; ++i) {
      const __nv_bfloat16* xr = x + (t0 + (i < nt ? i : 0)) * d + k;  // rows past T: a valid row, unused
      if constexpr (kV == 4) {
        const uint2 u = *reinterpret_cast<const uint2*>(xr);
        const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
        const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
        xv[i][0] = a.x, xv[i][1] = a.y, xv[i][2] = b.x, xv[i][3] = b.y;
      } else {
        xv[i][0] = __bfloat162float(*xr);
      }
    }
#pragma unroll
    for (int j = 0; j < kSmallExp; ++j) {
      const W* wr = w + std::int64_t(e0 + (j < ne ? j : 0)) * d + k;
      float wv[kV];
      if constexpr (kV == 4 && std::is_same_v<W, float>) {
        const float4 f = *reinterpret_cast<const float4*>(wr);
        wv[0] = f.x, wv[1] = f.y, wv[2] = f.z, wv[3] = f.w;
      } else if constexpr (kV == 4) {
        const uint2 u = *reinterpret_cast<const uint2*>(wr);
        const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
        const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
        wv[0] = a.x, wv[1] = a.y, wv[2] = b.x, wv[3] = b.y;
      } else {
        wv[0] = static_cast<float>(*wr);
      }
#pragma unroll
      for (int i = 0; i < kSmallTok; ++i)
#pragma unroll
        for (int v = 0; v < kV; ++v) acc[i * kSmallExp + j] = fmaf(xv[i][v], wv[v], acc[i * kSmallExp + j]);
    }
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  halve_over_warp<64>(acc, lane);
  halve_over_warp<32>(acc, lane);
  halve_over_warp<16>(acc, lane);
  halve_over_warp<8>(acc, lane);
  halve_over_warp<4>(acc, lane);
  *reinterpret_cast<float2*>(&red[warp][2 * lane]) = make_float2(acc[0], acc[1]);
  __syncthreads();
  if (threadIdx.x < kSmallTok * kSmallExp) {
    const int i = threadIdx.x / kSmallExp, j = threadIdx.x % kSmallExp;
    if (i < nt && j < ne) {
      float v = 0.0f;
      for (int q = 0; q < kSmallThreads / 32; ++q) v += red[q][threadIdx.x];
      logits[(t0 + i) * E + e0 + j] = v;
    }
  }
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

// Token t's final weights from the chosen scores (lane k < K holds choice k: expert ik, score
// wk), in the CPU's order (the softmax over the K in lane order, the renormalization's sum
// sequential over k), then ids and weights stored.
__device__ __forceinline__ void store_choices(const TopkParams& p, std::int64_t t, int ik, float wk,
                                              std::int32_t* __restrict__ ids, float* __restrict__ weights) {
  const int lane = threadIdx.x & 31, K = p.K;
  const float w_all = wk;
  if (p.kind == RouterKind::topk_softmax) {
    float mk = -INFINITY;
    for (int k = 0; k < K; ++k) mk = fmaxf(mk, __shfl_sync(0xffffffffu, w_all, k));
    const float ek = exp_cr(wk - mk);
    const float sk = lane_order_sum(lane < K ? ek : 0.0f);
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
}

// probs (optional, [T, E]): each token's probabilities as probs_kernel writes them, bit for bit
// (the same operations in the same order), so token rounding needs no second pass over the logits.
__global__ void __launch_bounds__(256, 4) topk_kernel(TopkParams p, const float* __restrict__ logits, int parts, const float* __restrict__ bias,
                            std::int64_t T, std::int32_t* __restrict__ ids, float* __restrict__ weights,
                            float* __restrict__ probs) {
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
    const float* l = logits + t * parts * E;
    for (int e = lane; e < E; e += 32) {
      s[e] = logit(l, E, parts, e);
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
        if (probs) probs[t * E + e] = sc;
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
      if (p.kind != RouterKind::topk_softmax || probs) {
        for (int e = lane; e < E; e += 32) c[e] = exp_cr(s[e] - m);
        __syncwarp();
        sum = lane_order_sum(c, E);
        if (probs)
          for (int e = lane; e < E; e += 32) probs[t * E + e] = c[e] / sum;
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
    store_choices(p, t, ik, wk, ids, weights);
    __syncwarp();
  }
}

// The softmax routers (softmax_topk, top1, topk_softmax) for E <= 32 J, a warp per token with
// the token's logits in registers: lane l holds experts l, l + 32, ..., so the arg-max passes read
// no shared memory and need no __syncwarp. The same operations in the same order as topk_kernel
// (the same choices, weights and probabilities, bit for bit; GpuRouter.AllKindsMatchCpu covers
// both): E up to 256 takes this kernel, the sigmoid router and larger E topk_kernel.
template <int J>
__global__ void __launch_bounds__(256) topk_reg_kernel(TopkParams p, const float* __restrict__ logits, int parts,
                                                       std::int64_t T, std::int32_t* __restrict__ ids,
                                                       float* __restrict__ weights, float* __restrict__ probs) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  const int E = p.E, K = p.K;
  for (std::int64_t t = blockIdx.x * std::int64_t(nwarps) + warp; t < T; t += std::int64_t(gridDim.x) * nwarps) {
    const float* l = logits + t * parts * E;
    float s[J], c[J];
    float m = -INFINITY;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int e = lane + 32 * j;
      s[j] = e < E ? logit(l, E, parts, e) : -INFINITY;
      c[j] = 0.0f;
      if (e < E) m = fmaxf(m, s[j]);
    }
    m = warp_max(m);
    float sum = 0.0f;
    if (p.kind != RouterKind::topk_softmax || probs) {
      float own = 0.0f;
#pragma unroll
      for (int j = 0; j < J; ++j)
        if (lane + 32 * j < E) {
          c[j] = exp_cr(s[j] - m);
          own += c[j];
        }
      sum = lane_order_sum(own);
      if (probs)
#pragma unroll
        for (int j = 0; j < J; ++j)
          if (lane + 32 * j < E) probs[t * E + lane + 32 * j] = c[j] / sum;
    }
    // The lane's candidates best first by better() (a transposition network, once), so that
    // each of the K rounds puts one head per lane into the warp's arg-max and only the winning
    // lane moves its list up. Lanes past E and NaN scores (never chosen, as better() decides)
    // hold (-inf, INT_MAX), below every candidate. hw: what the weight needs, the score (top-k
    // then softmax) or the exponential. Until then each round compared all J entries of every
    // lane against a taken mask (Nsight Compute, H200 run 131: the ALU pipe 70% busy, issue-bound).
    float hv[J], hw[J];
    int hi[J];
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int e = lane + 32 * j;
      const bool ok = e < E && !isnan(s[j]);
      hv[j] = ok ? s[j] : -INFINITY;
      hi[j] = ok ? e : INT_MAX;
      hw[j] = ok ? (p.kind == RouterKind::topk_softmax ? s[j] : c[j]) : 0.0f;
    }
#pragma unroll
    for (int r = 0; r < J; ++r)
#pragma unroll
      for (int j = r & 1; j + 1 < J; j += 2)
        if (better(hv[j + 1], hi[j + 1], hv[j], hi[j])) {
          const float v = hv[j], w = hw[j];
          const int i = hi[j];
          hv[j] = hv[j + 1], hw[j] = hw[j + 1], hi[j] = hi[j + 1];
          hv[j + 1] = v, hw[j + 1] = w, hi[j + 1] = i;
        }
    float vk = 0.0f;  // lane k < K holds choice k's score or exponential
    int ik = 0;
    for (int k = 0; k < K; ++k) {
      const int win = warp_best(hv[0], hi[0]);
      const int owner = win & 31;
      const float v = __shfl_sync(0xffffffffu, hw[0], owner);  // 0 where none is left (win INT_MAX)
      if (lane == owner) {
#pragma unroll
        for (int j = 0; j + 1 < J; ++j) hv[j] = hv[j + 1], hw[j] = hw[j + 1], hi[j] = hi[j + 1];
        hv[J - 1] = -INFINITY, hw[J - 1] = 0.0f, hi[J - 1] = INT_MAX;
      }
      if (lane == k) ik = win, vk = v;
    }
    const float wk = p.kind == RouterKind::topk_softmax ? vk : vk / sum;
    store_choices(p, t, ik, wk, ids, weights);
  }
}

__global__ void probs_kernel(RouterKind kind, int E, const float* __restrict__ logits, int parts, std::int64_t T,
                             float* __restrict__ probs) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  for (std::int64_t t = blockIdx.x * std::int64_t(nwarps) + warp; t < T; t += std::int64_t(gridDim.x) * nwarps) {
    const float* l = logits + t * parts * E;
    float* o = probs + t * E;
    for (int e = lane; e < E; e += 32) o[e] = logit(l, E, parts, e);  // the parts added once
    if (kind == RouterKind::sigmoid_group_topk) {
      for (int e = lane; e < E; e += 32) o[e] = 1.0f / (1.0f + exp_cr(-o[e]));
      continue;
    }
    float m = -INFINITY;
    for (int e = lane; e < E; e += 32) m = fmaxf(m, o[e]);
    m = warp_max(m);
    for (int e = lane; e < E; e += 32) o[e] = exp_cr(o[e] - m);
    __syncwarp();
    const float sum = lane_order_sum(o, E);
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

int router_logit_parts(std::int64_t T, bool x_bf16, bool w_bf16) {
  return x_bf16 && !w_bf16 && T > router_small_tokens() ? 3 : 1;
}

std::size_t router_scratch_bytes(std::int64_t T, std::int64_t d, int E, bool x_bf16, bool w_bf16) {
  const auto n = static_cast<std::size_t>(std::int64_t(E) * d);
  if (router_logit_parts(T, x_bf16, w_bf16) == 3) return 3 * n * sizeof(__nv_bfloat16);
  return !x_bf16 && w_bf16 ? n * sizeof(float) : 0;
}

namespace {

// logits [T, rows] fp32 (row-major; column-major [rows, T]) = w [rows, d] . x [T, d]^T, one cuBLAS
// GEMM accumulating in fp32; w and x both fp32 or both bf16 (type).
void logits_gemm(int rows, std::int64_t T, std::int64_t d, const void* w, const void* x, cudaDataType type,
                 float* logits) {
  const float one = 1.0f, zero = 0.0f;
  TILEMOE_CUBLAS_CHECK(cublasGemmEx(cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, rows, static_cast<int>(T),
                                    static_cast<int>(d), &one, w, type, static_cast<int>(d), x, type,
                                    static_cast<int>(d), &zero, logits, CUDA_R_32F, rows, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
}

template <class W>
void launch_logits_small(const __nv_bfloat16* x, const W* w, std::int64_t T, std::int64_t d, int E, float* logits) {
  const dim3 grid(static_cast<unsigned>((T + kSmallTok - 1) / kSmallTok),
                  static_cast<unsigned>((E + kSmallExp - 1) / kSmallExp));
  const bool vec = d % 4 == 0 && reinterpret_cast<std::uintptr_t>(x) % 8 == 0 &&
                   reinterpret_cast<std::uintptr_t>(w) % (4 * sizeof(W)) == 0;
  if (vec) logits_small_kernel<4, W><<<grid, kSmallThreads, 0, current_stream()>>>(x, w, T, d, E, logits);
  else logits_small_kernel<1, W><<<grid, kSmallThreads, 0, current_stream()>>>(x, w, T, d, E, logits);
  TILEMOE_CHECK_LAUNCH();
}

}  // namespace

int router_logits(const void* x, bool x_bf16, const void* w, bool w_bf16, std::int64_t T, std::int64_t d, int E,
                  float* logits, void* scratch) {
  const int parts = router_logit_parts(T, x_bf16, w_bf16);
  if (T == 0) return parts;
  const std::int64_t n = std::int64_t(E) * d;
  if (!x_bf16) {
    const float* wf = static_cast<const float*>(w);
    if (w_bf16) {
      float* wide = static_cast<float*>(scratch);
      widen_bf16_kernel<<<grid_for(n, 256 * 4), 256, 0, current_stream()>>>(static_cast<const __nv_bfloat16*>(w), n,
                                                                            wide);
      TILEMOE_CHECK_LAUNCH();
      wf = wide;
    }
    logits_gemm(E, T, d, wf, x, CUDA_R_32F, logits);
    return 1;
  }
  const auto* xb = static_cast<const __nv_bfloat16*>(x);
  if (T <= router_small_tokens()) {
    if (w_bf16) launch_logits_small(xb, static_cast<const __nv_bfloat16*>(w), T, d, E, logits);
    else launch_logits_small(xb, static_cast<const float*>(w), T, d, E, logits);
    return 1;
  }
  if (w_bf16) {
    // bf16 x and router: products exact in fp32, one bf16 tensor-core GEMM accumulating in fp32.
    logits_gemm(E, T, d, w, x, CUDA_R_16BF, logits);
    return 1;
  }
  // x is exact in bf16; w = hi + mid + lo in bf16 to within fp32 rounding, so one bf16 tensor-core
  // GEMM against the stacked parts [3E, d], accumulating in fp32, gives fp32-accurate logits
  // once the parts are added (topk_kernel, probs_kernel): x is read once, not three times.
  __nv_bfloat16* split = static_cast<__nv_bfloat16*>(scratch);
  split_bf16x3_kernel<<<grid_for(n, 256 * 4), 256, 0, current_stream()>>>(static_cast<const float*>(w), n, split);
  TILEMOE_CHECK_LAUNCH();
  logits_gemm(3 * E, T, d, split, x, CUDA_R_16BF, logits);
  return 3;
}

void router_topk(const RouterConfig& rc, const float* logits, const float* bias, std::int64_t T,
                 std::int32_t* ids, float* weights, int parts, float* probs) {
  check_arg(rc.top_k <= 32, "top_k", rc.top_k, "<= 32 on the GPU router");
  if (T == 0) return;
  TopkParams p{rc.kind, rc.num_experts, rc.top_k, rc.kind == RouterKind::sigmoid_group_topk ? rc.n_groups : 1,
               rc.topk_groups, rc.renormalize, rc.routed_scale};
  // E <= 256 only: at E 512 (16 registers of each) it ran slower than topk_kernel (H200 run 80:
  // the top-k stage 0.141 ms against 0.125 in run 78 on E 512, T 24576).
  if (rc.kind != RouterKind::sigmoid_group_topk && p.E <= 256) {
    const int grid = grid_for(T, 8);
    cudaStream_t st = current_stream();
    if (p.E <= 32) topk_reg_kernel<1><<<grid, 256, 0, st>>>(p, logits, parts, T, ids, weights, probs);
    else if (p.E <= 64) topk_reg_kernel<2><<<grid, 256, 0, st>>>(p, logits, parts, T, ids, weights, probs);
    else if (p.E <= 128) topk_reg_kernel<4><<<grid, 256, 0, st>>>(p, logits, parts, T, ids, weights, probs);
    else topk_reg_kernel<8><<<grid, 256, 0, st>>>(p, logits, parts, T, ids, weights, probs);
    TILEMOE_CHECK_LAUNCH();
    return;
  }
  const std::size_t per_warp = topk_smem_per_warp(p.E, p.n_groups);
  const std::size_t limit = device_props().smem_optin;
  check_arg(per_warp <= limit, "num_experts", p.E, "small enough for the router's shared memory");
  const int warps = static_cast<int>(std::clamp<std::size_t>((48 * 1024) / per_warp, 1, 8));
  const std::size_t smem = per_warp * warps;
  if (smem > 48 * 1024)
    TILEMOE_CUDA_CHECK(cudaFuncSetAttribute(topk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem)));
  topk_kernel<<<grid_for(T, warps), warps * 32, smem, current_stream()>>>(p, logits, parts, bias, T, ids, weights,
                                                                          probs);
  TILEMOE_CHECK_LAUNCH();
}

namespace {
// A thread per token (grid-stride: grid_for caps the grid): its K ids and weights copied, each
// id checked against [0, E) and the ids before it, each weight for finiteness; an id out of
// range becomes expert 0 with weight 0.
__global__ void take_routing_kernel(const std::int32_t* __restrict__ ids_in, const float* __restrict__ w_in,
                                    std::int64_t T, int K, int E, std::int32_t* __restrict__ ids,
                                    float* __restrict__ weights, int* bad) {
  const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t t = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < T; t += stride) {
    const std::int64_t a0 = t * K;
    bool ok = true;
    for (int k = 0; k < K; ++k) {
      const std::int32_t e = ids_in[a0 + k];
      const float wv = w_in[a0 + k];
      const bool in_range = e >= 0 && e < E;
      ok = ok && in_range && isfinite(wv);
      for (int j = 0; j < k; ++j) ok = ok && ids_in[a0 + j] != e;
      ids[a0 + k] = in_range ? e : 0;
      weights[a0 + k] = in_range ? wv : 0.0f;
    }
    if (!ok) atomicMin(bad, static_cast<int>(t));
  }
}
}  // namespace

void take_routing(const std::int32_t* ids_in, const float* w_in, std::int64_t T, int K, int E, std::int32_t* ids,
                  float* weights, int* bad) {
  TILEMOE_CUDA_CHECK(cudaMemsetAsync(bad, 0x7f, sizeof(int), current_stream()));  // kNoBadToken
  if (T == 0) return;
  take_routing_kernel<<<grid_for(T, 256), 256, 0, current_stream()>>>(ids_in, w_in, T, K, E, ids, weights, bad);
  TILEMOE_CHECK_LAUNCH();
}

void router_probs(const RouterConfig& rc, const float* logits, std::int64_t T, float* probs, int parts) {
  if (T == 0) return;
  probs_kernel<<<grid_for(T, 8), 256, 0, current_stream()>>>(rc.kind, rc.num_experts, logits, parts, T, probs);
  TILEMOE_CHECK_LAUNCH();
}

}  // namespace tilemoe::detail::gpu
