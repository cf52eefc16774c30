// Check macros for CUDA runtime and cuBLAS calls: each failure throws tilemoe::DeviceError with
// the call, the error's name and file:line. A kernel launch is followed by TILEMOE_CHECK_LAUNCH().
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "tilemoe/error.hpp"

namespace tilemoe::detail {

[[noreturn]] void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t st, const char* call, const char* file, int line);

}  // namespace tilemoe::detail

#define TILEMOE_CUDA_CHECK(call)                                                        \
  do {                                                                                  \
    cudaError_t tilemoe_err_ = (call);                                                  \
    if (tilemoe_err_ != cudaSuccess)                                                    \
      ::tilemoe::detail::throw_cuda_error(tilemoe_err_, #call, __FILE__, __LINE__);     \
  } while (0)

#define TILEMOE_CUBLAS_CHECK(call)                                                      \
  do {                                                                                  \
    cublasStatus_t tilemoe_st_ = (call);                                                \
    if (tilemoe_st_ != CUBLAS_STATUS_SUCCESS)                                           \
      ::tilemoe::detail::throw_cublas_error(tilemoe_st_, #call, __FILE__, __LINE__);    \
  } while (0)

#define TILEMOE_CHECK_LAUNCH() TILEMOE_CUDA_CHECK(cudaGetLastError())
