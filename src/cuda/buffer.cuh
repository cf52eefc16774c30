// DeviceBuffer: RAII ownership of one cudaMalloc'd block. Workspace: a grow-only scratch area
// carved into aligned pieces, reused across forwards so that the forward allocates nothing but
// its output (which keeps it capturable in a CUDA graph once warmed up).
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "check.cuh"

namespace tilemoe::detail {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t bytes) { reset(bytes); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), bytes_(std::exchange(o.bytes_, 0)),
        captured_(std::exchange(o.captured_, false)), retired_(std::move(o.retired_)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
      captured_ = std::exchange(o.captured_, false);
      retired_ = std::move(o.retired_);
    }
    return *this;
  }
  // A new block of that size (the old contents are lost). A block that a captured CUDA graph
  // reads (mark_captured) is kept, not freed, until the buffer goes (with its thread): the
  // graph's replays stay valid after a larger eager forward has grown the buffer. It holds the
  // whole block as it was at the capture, so capture after the largest warm-up.
  void reset(std::size_t bytes) {
    if (captured_ && p_) {
      retired_.push_back(p_);
      p_ = nullptr;
      captured_ = false;
    }
    release_current();
    if (bytes > 0) TILEMOE_CUDA_CHECK(cudaMalloc(&p_, bytes));
    bytes_ = bytes;
  }
  // Grows (never shrinks); the old contents are lost.
  void reserve(std::size_t bytes) {
    if (bytes > bytes_) reset(bytes);
  }
  void mark_captured() { captured_ = p_ != nullptr; }
  void* get() const { return p_; }
  std::size_t size() const { return bytes_; }

 private:
  void release_current() noexcept {
    if (p_) cudaFree(p_);
    p_ = nullptr;
    bytes_ = 0;
  }
  void release() noexcept {
    release_current();
    for (void* q : retired_) cudaFree(q);
    retired_.clear();
    captured_ = false;
  }
  void* p_ = nullptr;
  std::size_t bytes_ = 0;
  bool captured_ = false;      // p_ is read by a captured graph
  std::vector<void*> retired_;  // earlier blocks that captured graphs read
};

// Carves typed, 256-byte aligned pieces out of a base pointer (or, with base == nullptr, only
// counts the bytes needed).
class Carver {
 public:
  explicit Carver(void* base = nullptr) : base_(static_cast<char*>(base)) {}
  template <class T>
  T* take(std::size_t count) {
    offset_ = (offset_ + 255) / 256 * 256;
    T* p = base_ ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += count * sizeof(T);
    return p;
  }
  std::size_t bytes() const { return (offset_ + 255) / 256 * 256; }

 private:
  char* base_;
  std::size_t offset_ = 0;
};

}  // namespace tilemoe::detail
