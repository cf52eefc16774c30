// The chapter's "Sequential!" baseline on the GPU: the host loops over the experts and runs,
// for each, a cuBLAS GEMM into h (fp32), an activation kernel, and a second cuBLAS GEMM. The
// rows are gathered by token once before the loop. Needs the counts on the host (the caller
// copies them, which synchronizes): this path is not capturable in a CUDA graph.
#include <algorithm>
#include <cuda_bf16.h>

#include "activation.cuh"
#include "context.cuh"
#include "stages.hpp"

namespace tilemoe::detail::gpu {
namespace {

template <class T>
__global__ void gather_rows_kernel(const T* __restrict__ x, const std::int32_t* __restrict__ gather, std::int64_t A,
                                   std::int64_t d, T* __restrict__ xs) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < A * d;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t p = i / d, c = i - p * d;
    xs[i] = x[std::int64_t(gather[p]) * d + c];
  }
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

template <class T>
__global__ void activation_kernel(const float* __restrict__ h, std::int64_t rows, std::int64_t n, bool gated,
                                  Activation act, T* __restrict__ a) {
  const std::int64_t ldh = gated ? 2 * n : n;
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < rows * n;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t r = i / n, j = i - r * n;
    const float g = h[r * ldh + j];
    store(a + i, activate(act, g, gated ? h[r * ldh + n + j] : 0.0f));
  }
}

int blocks_for(std::int64_t items) {
  return static_cast<int>(std::max<std::int64_t>(
      1, std::min<std::int64_t>((items + 255) / 256, std::int64_t(device_props().sm_count) * 32)));
}

}  // namespace

void sequential_experts(const void* x, bool is_bf16, std::int64_t d, const void* w13, const void* w2, std::int64_t n,
                        bool gated, Activation act, const std::vector<std::int64_t>& offsets,
                        const std::int32_t* gather, void* y) {
  const int E = static_cast<int>(offsets.size()) - 1;
  const std::int64_t A = offsets.back(), rows13 = gated ? 2 * n : n;
  std::int64_t max_c = 0;
  for (int e = 0; e < E; ++e) max_c = std::max(max_c, offsets[e + 1] - offsets[e]);
  if (A == 0) return;
  const std::size_t es = is_bf16 ? 2 : 4;
  Carver sizer;
  sizer.take<unsigned char>(gather ? static_cast<std::size_t>(A * d) * es : 0);
  sizer.take<float>(static_cast<std::size_t>(max_c * rows13));
  sizer.take<unsigned char>(static_cast<std::size_t>(max_c * n) * es);
  DeviceBuffer& buf = scratch(Scratch::sequential);
  buf.reserve(sizer.bytes());
  Carver c(buf.get());
  unsigned char* xs = c.take<unsigned char>(gather ? static_cast<std::size_t>(A * d) * es : 0);
  float* h = c.take<float>(static_cast<std::size_t>(max_c * rows13));
  unsigned char* a = c.take<unsigned char>(static_cast<std::size_t>(max_c * n) * es);
  cudaStream_t st = current_stream();
  if (gather) {
    if (is_bf16)
      gather_rows_kernel<<<blocks_for(A * d), 256, 0, st>>>(static_cast<const __nv_bfloat16*>(x), gather, A, d,
                                                             reinterpret_cast<__nv_bfloat16*>(xs));
    else
      gather_rows_kernel<<<blocks_for(A * d), 256, 0, st>>>(static_cast<const float*>(x), gather, A, d,
                                                             reinterpret_cast<float*>(xs));
    TILEMOE_CHECK_LAUNCH();
  }
  const cudaDataType_t ty = is_bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const float one = 1.0f, zero = 0.0f;
  cublasHandle_t hd = cublas_handle();
  for (int e = 0; e < E; ++e) {
    const std::int64_t m = offsets[e + 1] - offsets[e];
    if (m == 0) continue;
    const void* xe = gather ? static_cast<const void*>(xs + static_cast<std::size_t>(offsets[e] * d) * es) : x;
    const void* w13e = static_cast<const unsigned char*>(w13) + static_cast<std::size_t>(e * rows13 * d) * es;
    const void* w2e = static_cast<const unsigned char*>(w2) + static_cast<std::size_t>(e * d * n) * es;
    void* ye = static_cast<unsigned char*>(y) + static_cast<std::size_t>(offsets[e] * d) * es;
    // Row-major h [m, rows13] = xe [m, d] . w13e [rows13, d]^T, as column-major h^T = w13e^T . xe^T.
    TILEMOE_CUBLAS_CHECK(cublasGemmEx(hd, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(rows13), static_cast<int>(m),
                                      static_cast<int>(d), &one, w13e, ty, static_cast<int>(d), xe, ty,
                                      static_cast<int>(d), &zero, h, CUDA_R_32F, static_cast<int>(rows13),
                                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (is_bf16)
      activation_kernel<<<blocks_for(m * n), 256, 0, st>>>(h, m, n, gated, act, reinterpret_cast<__nv_bfloat16*>(a));
    else
      activation_kernel<<<blocks_for(m * n), 256, 0, st>>>(h, m, n, gated, act, reinterpret_cast<float*>(a));
    TILEMOE_CHECK_LAUNCH();
    TILEMOE_CUBLAS_CHECK(cublasGemmEx(hd, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(d), static_cast<int>(m),
                                      static_cast<int>(n), &one, w2e, ty, static_cast<int>(n), a, ty,
                                      static_cast<int>(n), &zero, ye, ty, static_cast<int>(d), CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT));
  }
}

}  // namespace tilemoe::detail::gpu
