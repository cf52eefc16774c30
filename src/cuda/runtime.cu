// The CUDA runtime seam of the core (cuda_backend.hpp): allocation, copies, device presence;
// plus the per-thread context (stream, cuBLAS handle, device properties, scratch buffers) and
// the error reporting behind the check macros.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <memory>
#include <mutex>
#include <vector>

#include "context.cuh"
#include "core/cuda_backend.hpp"

namespace tilemoe::detail {

void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line) {
  throw DeviceError(concat("CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err),
                           ") in ", call, " at ", file, ":", line));
}

void throw_cublas_error(cublasStatus_t st, const char* call, const char* file, int line) {
  throw DeviceError(concat("cuBLAS error ", cublasGetStatusName(st), " (", cublasGetStatusString(st),
                           ") in ", call, " at ", file, ":", line));
}

bool cuda_built() { return true; }

bool cuda_device_present() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  return n > 0;
}

namespace {

// tilemoe's own stream-ordered pool on device dev, created once; freed memory stays in it
// (release threshold: never) for the next tensor of the process.
std::mutex pools_mu;
std::vector<cudaMemPool_t> pools;  // by device; null where none was created
cudaMemPool_t tensor_pool(int dev) {
  std::lock_guard<std::mutex> lock(pools_mu);
  if (pools.size() <= static_cast<std::size_t>(dev)) pools.resize(static_cast<std::size_t>(dev) + 1, nullptr);
  cudaMemPool_t& pool = pools[static_cast<std::size_t>(dev)];
  if (!pool) {
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = dev;
    TILEMOE_CUDA_CHECK(cudaMemPoolCreate(&pool, &props));
    std::uint64_t keep = ~std::uint64_t(0);
    TILEMOE_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  }
  return pool;
}

}  // namespace

namespace {
// Pool memory dropped while its stream was being captured into a CUDA graph: cudaFreeAsync there
// would add a free node, which only a graph's own allocations may have (the capture would fail).
// It is freed on that stream once the stream is next used by the library and not capturing: the
// thread's own stream by that thread (t_deferred; or when the thread ends), a caller's stream
// (which the caller names in ForwardOptions::stream again) by any thread. Memory whose caller
// stream is never used again stays in the pool; one destroyed and its handle taken by a new
// stream is freed on the new one, not after the old one's last work.
struct DeferredFree {
  void* p;
  int dev;
  cudaStream_t s;
};
struct ThreadDeferred {
  std::vector<DeferredFree> list;
  ~ThreadDeferred() {  // the thread ends (errors, as at process exit, ignored)
    cudaStreamCaptureStatus c = cudaStreamCaptureStatusNone;
    if (list.empty() || cudaStreamIsCapturing(cudaStreamPerThread, &c) != cudaSuccess ||
        c != cudaStreamCaptureStatusNone)
      return;
    int cur = 0;
    if (cudaGetDevice(&cur) != cudaSuccess) return;
    for (const DeferredFree& f : list) {
      if (f.dev != cur) cudaSetDevice(f.dev);
      cudaFreeAsync(f.p, cudaStreamPerThread);
      if (f.dev != cur) cudaSetDevice(cur);
    }
    cudaGetLastError();
  }
};
thread_local ThreadDeferred t_deferred;  // on this thread's cudaStreamPerThread
std::mutex g_deferred_mu;
std::vector<DeferredFree> g_deferred;  // on callers' streams
std::atomic<int> g_deferred_count{0};

void free_or_defer(void* p, int dev, cudaStream_t caller_stream) noexcept {
  const cudaStream_t s = caller_stream ? caller_stream : cudaStreamPerThread;
  cudaStreamCaptureStatus c = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(s, &c) != cudaSuccess || c == cudaStreamCaptureStatusNone) {
    if (cudaFreeAsync(p, s) != cudaSuccess) cudaGetLastError();  // (at teardown the runtime may be gone)
    return;
  }
  try {
    if (!caller_stream) {
      t_deferred.list.push_back({p, dev, s});
    } else {
      std::lock_guard<std::mutex> lock(g_deferred_mu);
      g_deferred.push_back({p, dev, s});
      g_deferred_count.fetch_add(1, std::memory_order_relaxed);
    }
  } catch (...) {  // no memory for the note: the block stays in the pool
  }
}

// The frees deferred on s (not capturing, the current device's).
void free_deferred(cudaStream_t s) {
  const bool none =
      s == cudaStreamPerThread ? t_deferred.list.empty() : g_deferred_count.load(std::memory_order_relaxed) == 0;
  if (none) return;
  int dev = 0;
  TILEMOE_CUDA_CHECK(cudaGetDevice(&dev));
  auto due = [&](const DeferredFree& f) { return f.s == s && f.dev == dev; };
  std::vector<DeferredFree> now;
  if (s == cudaStreamPerThread) {
    std::vector<DeferredFree>& l = t_deferred.list;
    for (const DeferredFree& f : l)
      if (due(f)) now.push_back(f);
    l.erase(std::remove_if(l.begin(), l.end(), due), l.end());
  } else {
    std::lock_guard<std::mutex> lock(g_deferred_mu);
    for (const DeferredFree& f : g_deferred)
      if (due(f)) now.push_back(f);
    g_deferred.erase(std::remove_if(g_deferred.begin(), g_deferred.end(), due), g_deferred.end());
    g_deferred_count.store(static_cast<int>(g_deferred.size()), std::memory_order_relaxed);
  }
  for (const DeferredFree& f : now) TILEMOE_CUDA_CHECK(cudaFreeAsync(f.p, s));
}
}  // namespace

// A tensor's device memory comes from tilemoe's stream-ordered pool (cudaMallocFromPoolAsync on
// the calling thread's stream) and goes back to it with cudaFreeAsync on the freeing thread's
// stream: neither waits for the device. Until then each tensor was a cudaMalloc, and its cudaFree
// synchronized the device: a forward's output cost the host 40-90 us per call at decode sizes
// and every eager forward a device synchronization when it was dropped (H200 run 95,
// docs/hopper_log.md). Eager fused layer, the cudaMalloc build (f1b72a2) against this one in one run
// (H200 run 97): sonic-7b T 24576 1.239 -> 1.111 ms, d 4096 / n 512 T 32768 6.499 -> 5.841,
// Qwen3-30B-A3B T 16384 2.279 -> 2.213, gpt-oss-120b T 8192 3.476 -> 3.293.
// The memory is ready in the allocating thread's stream order, which every stage of the library
// runs on; a tensor handed to other streams needs the usual synchronization, as with any
// stream-ordered allocator. While the stream is being captured into a CUDA graph, plain
// cudaMalloc and cudaFree (an allocation node would keep the graph from being replayed while the
// tensor lives); pool memory dropped during a capture is freed later (free_or_defer).
std::shared_ptr<void> cuda_alloc(std::size_t bytes) {
  cudaStream_t s = current_stream();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  TILEMOE_CUDA_CHECK(cudaStreamIsCapturing(s, &capture));
  void* p = nullptr;
  if (capture != cudaStreamCaptureStatusNone) {
    TILEMOE_CUDA_CHECK(cudaMalloc(&p, bytes));
    return std::shared_ptr<void>(p, [](void* q) {
      // Also where a later capture (thread-local or global mode) is under way when the tensor
      // goes: this thread relaxed for the call, which would otherwise fail that capture.
      cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
      cudaThreadExchangeStreamCaptureMode(&mode);
      if (cudaFree(q) != cudaSuccess) cudaGetLastError();  // (at teardown the runtime may be gone)
      cudaThreadExchangeStreamCaptureMode(&mode);
    });
  }
  free_deferred(s);
  int dev = 0;
  TILEMOE_CUDA_CHECK(cudaGetDevice(&dev));
  TILEMOE_CUDA_CHECK(cudaMallocFromPoolAsync(&p, bytes, tensor_pool(dev), s));
  // Freed on the freeing thread's cudaStreamPerThread, or, for a tensor made on a caller's stream
  // (a forward's output with ForwardOptions::stream), on that stream: after the work the caller
  // queued there on it (that stream must outlive the tensor).
  const cudaStream_t free_on = s == cudaStreamPerThread ? nullptr : s;
  return std::shared_ptr<void>(p, [dev, free_on](void* q) {
    // On the allocating device; errors at teardown are ignored.
    int cur = dev;
    if (cudaGetDevice(&cur) != cudaSuccess) return;
    if (cur != dev) cudaSetDevice(dev);
    free_or_defer(q, dev, free_on);
    if (cur != dev) cudaSetDevice(cur);
  });
}

int cuda_pointer_device(const void* p) {
  if (!cuda_device_present()) return -1;
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();  // not an error of the caller's stream: clear it
    return -1;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged ? a.device : -1;
}

int cuda_current_device() {
  int dev = 0;
  TILEMOE_CUDA_CHECK(cudaGetDevice(&dev));
  return dev;
}

void cuda_copy(void* dst, const void* src, std::size_t bytes, CopyKind kind) {
  if (bytes == 0) return;
  cudaMemcpyKind k = kind == CopyKind::host_to_device   ? cudaMemcpyHostToDevice
                     : kind == CopyKind::device_to_host ? cudaMemcpyDeviceToHost
                                                        : cudaMemcpyDeviceToDevice;
  TILEMOE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, k, current_stream()));
  TILEMOE_CUDA_CHECK(cudaStreamSynchronize(current_stream()));
}

const DeviceProps& device_props() {
  static std::mutex mu;
  static std::vector<std::unique_ptr<DeviceProps>> cache;
  int dev = 0;
  TILEMOE_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  if (cache.size() <= static_cast<std::size_t>(dev)) cache.resize(dev + 1);
  if (!cache[dev]) {
    cudaDeviceProp p{};
    TILEMOE_CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
    auto d = std::make_unique<DeviceProps>();
    d->device = dev;
    d->sm_count = p.multiProcessorCount;
    d->cc_major = p.major;
    d->cc_minor = p.minor;
    d->smem_optin = p.sharedMemPerBlockOptin;
    d->l2_bytes = static_cast<std::size_t>(p.l2CacheSize);
    std::snprintf(d->name, sizeof(d->name), "%s", p.name);
    cache[dev] = std::move(d);
  }
  return *cache[dev];
}

namespace {
// One per thread (and device in use by it). The handle is destroyed with the thread; at process
// exit the CUDA runtime may already be gone, so errors there are ignored.
struct ThreadContext {
  int device = -1;
  cublasHandle_t handle = nullptr;
  cudaStream_t handle_stream = nullptr;  // the stream the handle is bound to
  DeviceBuffer cublas_ws;
  DeviceBuffer counters;
  std::array<DeviceBuffer, static_cast<int>(Scratch::count)> scratch;
  cudaEvent_t done = nullptr;  // recorded where a forward on a caller's stream ended
  ~ThreadContext() {
    if (handle) cublasDestroy(handle);
    if (done) cudaEventDestroy(done);
  }
};
thread_local ThreadContext tctx;
// The stream of this thread's work (StreamScope), and the stream its last forward ran on, whose
// end `done` marks where that is a caller's stream (last_recorded).
thread_local cudaStream_t t_stream = cudaStreamPerThread;
thread_local cudaStream_t t_last = cudaStreamPerThread;
thread_local bool t_last_recorded = false;

void bind_device() {
  int dev = 0;
  TILEMOE_CUDA_CHECK(cudaGetDevice(&dev));
  if (tctx.device == dev) return;
  if (tctx.handle) {
    cublasDestroy(tctx.handle);
    tctx.handle = nullptr;
  }
  if (tctx.done) {
    cudaEventDestroy(tctx.done);
    tctx.done = nullptr;
  }
  t_last_recorded = false;
  for (auto& b : tctx.scratch) b.reset(0);
  tctx.cublas_ws.reset(0);
  tctx.counters.reset(0);
  tctx.device = dev;
}
}  // namespace

cudaStream_t current_stream() { return t_stream; }

bool stream_capturing(cudaStream_t s) {
  cudaStreamCaptureStatus c = cudaStreamCaptureStatusNone;
  TILEMOE_CUDA_CHECK(cudaStreamIsCapturing(s, &c));
  return c != cudaStreamCaptureStatusNone;
}

cublasHandle_t cublas_handle() {
  bind_device();
  if (!tctx.handle) {
    TILEMOE_CUBLAS_CHECK(cublasCreate(&tctx.handle));
    // Our own workspace, so that cuBLAS allocates nothing inside a graph capture.
    tctx.cublas_ws.reset(std::size_t(32) << 20);
    TILEMOE_CUBLAS_CHECK(cublasSetMathMode(tctx.handle, CUBLAS_DEFAULT_MATH));
    tctx.handle_stream = nullptr;
  }
  if (tctx.handle_stream != current_stream()) {
    TILEMOE_CUBLAS_CHECK(cublasSetStream(tctx.handle, current_stream()));
    // (cublasSetStream puts the handle back on cuBLAS's own workspace pool: ours again.)
    TILEMOE_CUBLAS_CHECK(cublasSetWorkspace(tctx.handle, tctx.cublas_ws.get(), tctx.cublas_ws.size()));
    tctx.handle_stream = current_stream();
  }
  return tctx.handle;
}

StreamScope::StreamScope(cudaStream_t s) : prev_(t_stream) {
  if (!s) s = cudaStreamPerThread;
  bind_device();
  // A captured forward runs at the graph's replays, not now: the eager order of the thread's
  // forwards (t_last, done) stays as the last eager one left it.
  const bool capturing = stream_capturing(s);
  if (!capturing) {
    // The workspaces were last used by a forward on t_last: s waits for it. A caller's stream
    // recorded `done` at that forward's end (it may be gone since: never touched again here), and
    // s waits for it even where s has that stream's handle (a stream destroyed since may have left
    // its handle to a new one); cudaStreamPerThread is always there to record on now.
    if (t_last_recorded) {
      TILEMOE_CUDA_CHECK(cudaStreamWaitEvent(s, tctx.done, 0));
    } else if (t_last == cudaStreamPerThread && s != cudaStreamPerThread) {
      if (!tctx.done) TILEMOE_CUDA_CHECK(cudaEventCreateWithFlags(&tctx.done, cudaEventDisableTiming));
      if (!stream_capturing(cudaStreamPerThread)) {
        TILEMOE_CUDA_CHECK(cudaEventRecord(tctx.done, cudaStreamPerThread));
        TILEMOE_CUDA_CHECK(cudaStreamWaitEvent(s, tctx.done, 0));
      }
    }
    free_deferred(s);
  }
  t_stream = s;
  if (!capturing) {
    t_last = s;
    t_last_recorded = false;
  }
}

StreamScope::~StreamScope() {
  // A captured forward: its graph reads the thread's workspaces as they are now, so they are kept
  // for its replays when a later forward grows them. Otherwise a caller's stream marks this
  // forward's end for the next forward on another stream, and the thread's own stream waits for
  // it: what runs there next (a copy of the output with Tensor::to, the free of an input made
  // there, whose memory the pool may hand out again) comes after the forward that read it.
  // (A destructor: errors end it, nothing throws.)
  const cudaStream_t s = t_stream;
  t_stream = prev_;
  cudaStreamCaptureStatus c = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(s, &c) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  if (c != cudaStreamCaptureStatusNone) {
    tctx.scratch[static_cast<int>(Scratch::forward)].mark_captured();
    tctx.counters.mark_captured();
    tctx.cublas_ws.mark_captured();
    return;
  }
  if (s == cudaStreamPerThread) return;
  if (!tctx.done && cudaEventCreateWithFlags(&tctx.done, cudaEventDisableTiming) != cudaSuccess) return;
  t_last_recorded = cudaEventRecord(tctx.done, s) == cudaSuccess;
  bool ok = t_last_recorded;
  if (ok && cudaStreamIsCapturing(cudaStreamPerThread, &c) == cudaSuccess && c == cudaStreamCaptureStatusNone)
    ok = cudaStreamWaitEvent(cudaStreamPerThread, tctx.done, 0) == cudaSuccess;
  if (!ok) cudaGetLastError();  // not the next launch's error
}

void cuda_release_cached() {
  TILEMOE_CUDA_CHECK(cudaDeviceSynchronize());  // the frees queued on streams have happened
  // This thread's scratch buffers (reset keeps a block that a captured graph reads).
  for (auto& b : tctx.scratch) b.reset(0);
  int cur = 0;
  TILEMOE_CUDA_CHECK(cudaGetDevice(&cur));
  std::lock_guard<std::mutex> lock(pools_mu);
  for (std::size_t dev = 0; dev < pools.size(); ++dev) {
    if (!pools[dev]) continue;
    if (static_cast<int>(dev) != cur) {
      TILEMOE_CUDA_CHECK(cudaSetDevice(static_cast<int>(dev)));
      TILEMOE_CUDA_CHECK(cudaDeviceSynchronize());
    }
    TILEMOE_CUDA_CHECK(cudaMemPoolTrimTo(pools[dev], 0));
  }
  TILEMOE_CUDA_CHECK(cudaSetDevice(cur));
}

DeviceBuffer& scratch(Scratch which) {
  bind_device();
  return tctx.scratch[static_cast<int>(which)];
}

int* tile_counters(std::int64_t rows) {
  bind_device();
  const std::size_t bytes = sizeof(int) * static_cast<std::size_t>(kTileCounterHead + std::max<std::int64_t>(rows, 0));
  if (tctx.counters.size() < bytes) {
    tctx.counters.reset(bytes);  // (a cudaFree of the smaller one first: no launch still uses it)
    // On the stream (a memset node where this happens inside a graph capture).
    TILEMOE_CUDA_CHECK(cudaMemsetAsync(tctx.counters.get(), 0, tctx.counters.size(), current_stream()));
  }
  return static_cast<int*>(tctx.counters.get());
}

}  // namespace tilemoe::detail
