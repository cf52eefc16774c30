// Per-thread GPU context: the stream every stage runs on, the cuBLAS handle, the device's
// properties and grow-only workspaces. The library runs on cudaStreamPerThread, or during a
// forward on the caller's stream (ForwardOptions::stream); either can be captured into a CUDA
// graph (cudaStreamBeginCapture(stream, ...)).
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

// The stream this thread's work goes to: cudaStreamPerThread, or a StreamScope's.
cudaStream_t current_stream();
cublasHandle_t cublas_handle();     // bound to current_stream(), with its own workspace

// Whether s is being captured into a CUDA graph.
bool stream_capturing(cudaStream_t s);

// This thread's work runs on stream s (null: cudaStreamPerThread) until the scope ends. The
// thread's workspaces (scratch, tile counters, cuBLAS's) serve every stream it uses, so where its
// last forward ran on another stream, s first waits for that forward's work (an event, no host
// wait), and a forward on a caller's stream records one at its end; neither happens while a
// stream is being captured into a graph (ordering replays is the caller's part). A captured
// forward's scope marks the workspaces its graph reads, which are then kept when they grow.
class StreamScope {
 public:
  explicit StreamScope(cudaStream_t s);
  ~StreamScope();
  StreamScope(const StreamScope&) = delete;
  StreamScope& operator=(const StreamScope&) = delete;

 private:
  cudaStream_t prev_;
};

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
