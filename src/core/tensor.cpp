// Tensor storage, conversion and checks (CPU side; device memory through cuda_backend.hpp).
#include "tilemoe/tensor.hpp"

#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <sstream>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cuda_backend.hpp"

namespace tilemoe {

namespace {
// Host storage. Large buffers take 2 MiB pages where Linux offers them (transparent huge pages in
// "madvise" mode): the forward's fresh [T*K, d] expert output is written once per call, and
// faulting it in 4 KiB pages cost ~5% of a qwen3-30b-a3b forward on 2 cores.
std::shared_ptr<void> host_alloc(std::size_t bytes) {
  constexpr std::size_t kHugePage = std::size_t(2) << 20;
  if (bytes < 4 * kHugePage)
    return std::shared_ptr<void>(::operator new(bytes), [](void* p) { ::operator delete(p); });
  const std::size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = std::aligned_alloc(kHugePage, rounded);
  if (!p) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
  madvise(p, rounded, MADV_HUGEPAGE);  // a hint: without it the pages are simply 4 KiB
#endif
  return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
}
}  // namespace

std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::bf16: return 2;
    case DType::f64: return 8;
    case DType::i32: return 4;
    case DType::i64: return 8;
  }
  return 0;
}

const char* to_string(DType t) {
  switch (t) {
    case DType::f32: return "fp32";
    case DType::bf16: return "bf16";
    case DType::f64: return "fp64";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
  }
  return "?";
}

const char* to_string(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

DType parse_dtype(std::string_view s, std::string_view what) {
  if (s == "fp32" || s == "f32" || s == "float32" || s == "float") return DType::f32;
  if (s == "bf16" || s == "bfloat16") return DType::bf16;
  throw InvalidArgument(detail::concat(what, " = '", s, "': expected fp32 or bf16"));
}

Device parse_device(std::string_view s) {
  if (s == "cpu") return Device::cpu;
  if (s == "cuda" || s == "gpu") return Device::cuda;
  throw InvalidArgument(detail::concat("device = '", s, "': expected cpu or cuda"));
}

std::string to_string(const Shape& s) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

bool cuda_available() { return detail::cuda_built() && detail::cuda_device_present(); }
Device default_device() { return cuda_available() ? Device::cuda : Device::cpu; }
void synchronize(Device device) {
  if (device == Device::cuda) detail::cuda_synchronize();
}
void release_cached_memory() {
  if (cuda_available()) detail::cuda_release_cached();
}
std::string device_name(Device device) {
  return device == Device::cuda ? detail::cuda_device_name() : std::string("cpu");
}

namespace {
// The elements of a shape, whose extents must be non-negative and their product below 2^60.
std::int64_t checked_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (auto e : shape) {
    check_arg(e >= 0, "shape", to_string(shape), "non-negative extents");
    check_arg(e == 0 || n <= (std::numeric_limits<std::int64_t>::max() / 8) / e, "shape", to_string(shape),
              "fewer than 2^60 elements");
    n *= e;
  }
  return n;
}
}  // namespace

Tensor Tensor::empty(Shape shape, DType dtype, Device device) {
  Tensor t;
  const std::int64_t n = checked_numel(shape);
  t.shape_ = std::move(shape);
  t.numel_ = n;
  t.dtype_ = dtype;
  t.device_ = device;
  const std::size_t bytes = std::max<std::size_t>(t.nbytes(), 1);
  if (device == Device::cpu) {
    try {
      t.storage_ = host_alloc(bytes);
    } catch (const std::bad_alloc&) {
      throw Error(detail::concat("out of host memory: a CPU tensor ", to_string(t.shape_), " ", to_string(dtype), " of ",
                                 static_cast<double>(bytes) / 1e9, " GB could not be allocated"));
    }
  } else {
    t.storage_ = detail::cuda_alloc(bytes);
  }
  return t;
}

Tensor Tensor::from_blob(void* data, Shape shape, DType dtype, Device device, std::function<void(void*)> release) {
  const std::int64_t n = checked_numel(shape);
  check_arg(data != nullptr, "from_blob: data", "null", "a pointer to the tensor's memory");
  const std::size_t es = dtype_size(dtype);
  check_arg(reinterpret_cast<std::uintptr_t>(data) % es == 0, "from_blob: data", data,
            detail::concat("an address aligned to ", to_string(dtype), "'s ", es, " bytes"));
  const int holder = detail::cuda_pointer_device(data);
  if (device == Device::cuda) {
    const int dev = detail::cuda_current_device();  // (throws where there is no CUDA backend)
    check_arg(holder >= 0, "from_blob: data", data, "device memory for device = cuda (this is host memory)");
    check_arg(holder == dev, "from_blob: data", data,
              detail::concat("memory of this thread's GPU ", dev, " (it is GPU ", holder, "'s)"));
  } else {
    check_arg(holder < 0, "from_blob: data", data,
              detail::concat("host memory for device = cpu (this is GPU ", holder, "'s memory)"));
  }
  Tensor t;
  t.shape_ = std::move(shape);
  t.numel_ = n;
  t.dtype_ = dtype;
  t.device_ = device;
  if (release)
    t.storage_ = std::shared_ptr<void>(data, std::move(release));
  else
    t.storage_ = std::shared_ptr<void>(data, [](void*) {});
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype, Device device) {
  Tensor t = empty(std::move(shape), dtype, device);
  if (device == Device::cpu) {
    std::memset(t.raw(), 0, t.nbytes());
  } else {
    Tensor h = zeros(t.shape_, dtype, Device::cpu);
    detail::cuda_copy(t.raw(), h.raw(), t.nbytes(), detail::CopyKind::host_to_device);
  }
  return t;
}

Tensor Tensor::from_floats(Shape shape, const std::vector<float>& values, DType dtype) {
  Tensor t = empty(std::move(shape), dtype);
  check_arg(static_cast<std::int64_t>(values.size()) == t.numel(), "values.size()", values.size(),
            detail::concat("the shape's element count ", t.numel()));
  switch (dtype) {
    case DType::f32: std::memcpy(t.raw(), values.data(), t.nbytes()); break;
    case DType::bf16: {
      auto* p = t.data<bf16>();
      for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = bf16::from_float(values[i]);
      break;
    }
    case DType::f64: {
      auto* p = t.data<double>();
      for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = values[i];
      break;
    }
    default:
      throw InvalidArgument(detail::concat("dtype = ", to_string(dtype), ": expected fp32, bf16 or fp64"));
  }
  return t;
}

std::int64_t Tensor::dim(int i) const {
  check_arg(i >= 0 && i < rank(), "dim", i, detail::concat("0 <= dim < rank (", rank(), ")"));
  return shape_[static_cast<std::size_t>(i)];
}

void Tensor::check_type(DType want) const {
  if (want != dtype_)
    throw InvalidArgument(detail::concat("tensor dtype = ", to_string(dtype_), ": expected ",
                                         to_string(want), " for this access"));
}

Tensor Tensor::to(Device device) const {
  Tensor t = empty(shape_, dtype_, device);
  if (nbytes() == 0) return t;
  using detail::CopyKind;
  if (device_ == Device::cpu && device == Device::cpu) {
    std::memcpy(t.raw(), raw(), nbytes());
  } else if (device_ == Device::cpu) {
    detail::cuda_copy(t.raw(), raw(), nbytes(), CopyKind::host_to_device);
  } else if (device == Device::cpu) {
    detail::cuda_copy(t.raw(), raw(), nbytes(), CopyKind::device_to_host);
  } else {
    detail::cuda_copy(t.raw(), raw(), nbytes(), CopyKind::device_to_device);
  }
  return t;
}

Tensor Tensor::to(DType dtype) const {
  if (device_ != Device::cpu) return to(Device::cpu).to(dtype).to(device_);
  if (dtype == dtype_) return clone();
  std::vector<float> f = to_floats();
  if (dtype == DType::f64) {
    Tensor t = empty(shape_, dtype);
    std::vector<double> d = to_doubles();
    std::memcpy(t.raw(), d.data(), t.nbytes());
    return t;
  }
  return from_floats(shape_, f, dtype);
}

std::vector<double> Tensor::to_doubles() const {
  if (device_ != Device::cpu) return to(Device::cpu).to_doubles();
  std::vector<double> out(static_cast<std::size_t>(numel_));
  switch (dtype_) {
    case DType::f32: { auto* p = data<float>(); for (std::int64_t i = 0; i < numel_; ++i) out[i] = p[i]; break; }
    case DType::bf16: { auto* p = data<bf16>(); for (std::int64_t i = 0; i < numel_; ++i) out[i] = p[i].to_float(); break; }
    case DType::f64: std::memcpy(out.data(), raw(), nbytes()); break;
    case DType::i32: { auto* p = data<std::int32_t>(); for (std::int64_t i = 0; i < numel_; ++i) out[i] = p[i]; break; }
    case DType::i64: { auto* p = data<std::int64_t>(); for (std::int64_t i = 0; i < numel_; ++i) out[i] = static_cast<double>(p[i]); break; }
  }
  return out;
}

std::vector<float> Tensor::to_floats() const {
  if (device_ != Device::cpu) return to(Device::cpu).to_floats();
  if (dtype_ == DType::f32) {
    std::vector<float> out(static_cast<std::size_t>(numel_));
    std::memcpy(out.data(), raw(), nbytes());
    return out;
  }
  if (dtype_ == DType::bf16) {
    std::vector<float> out(static_cast<std::size_t>(numel_));
    auto* p = data<bf16>();
    for (std::int64_t i = 0; i < numel_; ++i) out[i] = p[i].to_float();
    return out;
  }
  std::vector<double> d = to_doubles();
  return std::vector<float>(d.begin(), d.end());
}

void check_shape(const Tensor& t, const char* name, const Shape& expected) {
  bool ok = t.rank() == static_cast<int>(expected.size());
  for (std::size_t i = 0; ok && i < expected.size(); ++i)
    ok = expected[i] < 0 || expected[i] == t.shape()[i];
  if (!ok) {
    std::ostringstream want;
    want << '[';
    for (std::size_t i = 0; i < expected.size(); ++i)
      want << (i ? ", " : "") << (expected[i] < 0 ? std::string("*") : std::to_string(expected[i]));
    want << ']';
    throw InvalidArgument(detail::concat(name, ".shape = ", to_string(t.shape()), ": expected ", want.str()));
  }
}

void check_dtype(const Tensor& t, const char* name, std::initializer_list<DType> allowed) {
  for (DType d : allowed)
    if (t.dtype() == d) return;
  std::string list;
  for (DType d : allowed) list += (list.empty() ? "" : " or ") + std::string(to_string(d));
  throw InvalidArgument(detail::concat(name, ".dtype = ", to_string(t.dtype()), ": expected ", list));
}

void check_finite(const Tensor& t, const char* name) {
  const std::vector<float> v = t.to_floats();
  for (std::size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i]))
      throw InvalidArgument(detail::concat(name, "[", i, "] = ", v[i], ": expected finite values"));
}

}  // namespace tilemoe
