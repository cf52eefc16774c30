// Host-side device queries used by the tools: synchronize, the device's name.
#include <cuda_runtime.h>

#include "core/cuda_backend.hpp"

namespace tilemoe::detail {

void cuda_synchronize() {
  const cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess)
    throw DeviceError(concat("cudaDeviceSynchronize: ", cudaGetErrorString(e), " (", __FILE__, ":", __LINE__, ")"));
}

std::string cuda_device_name() {
  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess)
    return "unknown CUDA device";
  return prop.name;
}

}  // namespace tilemoe::detail
