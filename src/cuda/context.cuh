// Per-thread GPU context: the stream every stage runs on, the cuBLAS handle, the device's
// properties and grow-only workspaces. The library runs on cudaStreamPerThread, which a caller
// can capture into a CUDA graph (cudaStreamBeginCapture(cudaStreamPerThread, ...)).
#pragma once
#include <cstddef>
#include <cstdint>

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
// This thread's int32 counters of the warp-specialized kernels (sm90/grouped_ws.cu): the dynamic
// schedule's, then from kTileCounterHead on, `rows` per-row-tile counts of a pair launch. Zero
// between launches (each launch's last blocks reset what they used), so the launches of one
// stream may share them; zeroed on the stream whenever (re)allocated, which a call before a graph
// capture with the largest `rows` keeps out of the capture.
constexpr int kTileCounterHead = 64;
int* tile_counters(std::int64_t rows = 0);

}  // namespace tilemoe::detail
