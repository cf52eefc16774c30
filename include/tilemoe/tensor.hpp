// Tensor: a shape, an element type, a device and shared ownership of one buffer.
// Copies share the buffer (like torch.Tensor); clone() or to() make new ones. Device buffers
// are allocated through the CUDA backend when the library is built with it.
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "tilemoe/dtype.hpp"
#include "tilemoe/error.hpp"

namespace tilemoe {

using Shape = std::vector<std::int64_t>;
std::string to_string(const Shape& s);

class Tensor {
 public:
  Tensor() = default;
  // Uninitialized storage (on the GPU: device memory, not zeroed).
  static Tensor empty(Shape shape, DType dtype, Device device = Device::cpu);
  static Tensor zeros(Shape shape, DType dtype, Device device = Device::cpu);
  // A CPU tensor holding a copy of values, converted to dtype (f32, bf16 or f64).
  static Tensor from_floats(Shape shape, const std::vector<float>& values, DType dtype = DType::f32);
  // A tensor over memory the caller owns, without a copy: weights already in a checkpoint
  // buffer, or another framework's tensor (PyTorch's data_ptr()). data holds shape's elements of
  // dtype, contiguous in row-major order, aligned to the element size, on `device` (checked: a
  // CUDA tensor's data must be device memory of this thread's GPU, a CPU tensor's must not be
  // device memory). data must stay valid while any copy of the tensor lives; release, if given,
  // is called with data once the last copy is gone, which on the GPU may be before the work
  // queued on the forward's stream has read it (hand the memory back in that stream's order).
  // The library reads inputs and weights and writes only the tensors it returns.
  static Tensor from_blob(void* data, Shape shape, DType dtype, Device device = Device::cpu,
                          std::function<void(void*)> release = {});

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  std::int64_t dim(int i) const;
  std::int64_t numel() const { return numel_; }
  std::size_t nbytes() const { return static_cast<std::size_t>(numel_) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool is_cuda() const { return device_ == Device::cuda; }

  void* raw() { return storage_.get(); }
  const void* raw() const { return storage_.get(); }
  // Typed pointer; throws if T does not match dtype(). On a CUDA tensor it is a device pointer.
  template <class T> T* data() {
    check_type(dtype_of<T>());
    return static_cast<T*>(raw());
  }
  template <class T> const T* data() const {
    check_type(dtype_of<T>());
    return static_cast<const T*>(raw());
  }

  Tensor to(Device device) const;  // a copy on that device (a copy even if already there)
  Tensor to(DType dtype) const;    // a converted copy (CPU tensors, float types)
  Tensor clone() const { return to(device_); }
  // The values as floats on the host (f32, bf16 or f64 tensors, any device).
  std::vector<float> to_floats() const;
  std::vector<double> to_doubles() const;

 private:
  void check_type(DType want) const;
  std::shared_ptr<void> storage_;
  Shape shape_;
  std::int64_t numel_ = 0;
  DType dtype_ = DType::f32;
  Device device_ = Device::cpu;
};

// Seeded random values, uniform with mean 0 and standard deviation sd, from a counter-based hash
// of (seed, index): the same tensor on every platform and for any thread count, filled on all
// cores (a DeepSeek-V3 layer's 11 B weights take seconds). f32, bf16 or f64, on the CPU.
Tensor random_uniform(Shape shape, DType dtype, float sd, std::uint64_t seed);

// Throws InvalidArgument naming `name` unless t has this rank and, where expected[i] >= 0,
// this extent; e.g. check_shape(x, "x", {-1, d}).
void check_shape(const Tensor& t, const char* name, const Shape& expected);
void check_dtype(const Tensor& t, const char* name, std::initializer_list<DType> allowed);
// Throws InvalidArgument if any element is NaN or Inf (host copy for CUDA tensors).
void check_finite(const Tensor& t, const char* name);

// Whether the library was built with CUDA and a usable GPU is present.
bool cuda_available();
Device default_device();
// Waits for the device's queued work (no-op for the CPU); for timing from the host.
void synchronize(Device device);
// Waits for the GPU, then gives back to the driver the device memory that tilemoe keeps for
// reuse: freed tensors' memory in its pool and the calling thread's forward workspaces (each
// grown to the largest layer so far; a workspace that a captured CUDA graph reads stays). For
// another framework or process that needs the memory next, as torch.cuda.empty_cache() does;
// the next forward allocates anew. Nothing happens without a GPU.
void release_cached_memory();
// The accelerator's name ("NVIDIA H100 80GB HBM3"), or "cpu".
std::string device_name(Device device);

}  // namespace tilemoe
