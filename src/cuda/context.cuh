// Per-thread GPU context: the stream every stage runs on, the cuBLAS handle, the device's
// properties and grow-only workspaces. The library runs on cudaStreamPerThread, which a caller
// can capture into a CUDA graph (cudaStreamBeginCapture(cudaStreamPerThread, ...)).
#pragma once
#include <cstddef>

#include "buffer.cuh"

namespace tilemoe::detail {

struct DeviceProps {
  int device = 0;
  int sm_count = 0;
  int cc_major = 0, cc_minor = 0;
  std::size_t smem_optin = 0;  // shared memory per block after cudaFuncSetAttribute
  std::size_t l2_bytes = 0;
  char name[256] = {};
};
const DeviceProps& device_props();  // of the current device, cached

inline cudaStream_t current_stream() { return cudaStreamPerThread; }
cublasHandle_t cublas_handle();     // bound to current_stream(), with its own workspace

enum class Scratch { forward = 0, sequential = 1, count = 2 };
DeviceBuffer& scratch(Scratch which);  // this thread's grow-only scratch buffer
// This thread's two int32 tile counters of the warp-specialized kernels' dynamic schedule
// (sm90/grouped_ws.cu): zero between launches (each launch's last block resets them), so the
// launches of one stream may share them; zeroed on the stream when first allocated.
int* tile_counters();

}  // namespace tilemoe::detail
