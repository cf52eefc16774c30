// Element types, devices and the bf16 storage type shared by the CPU and the GPU code.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace tilemoe {

enum class DType : std::uint8_t { f32, bf16, f64, i32, i64 };
enum class Device : std::uint8_t { cpu, cuda };

std::size_t dtype_size(DType t);
const char* to_string(DType t);
const char* to_string(Device d);
// "fp32"|"f32"|"float32", "bf16"|"bfloat16"; else InvalidArgument naming `what` (a flag, say).
DType parse_dtype(std::string_view s, std::string_view what = "dtype");
Device parse_device(std::string_view s);  // "cpu", "cuda"|"gpu"

// bfloat16 storage: the upper 16 bits of an IEEE float. Same layout as CUDA's __nv_bfloat16,
// so device buffers of either type are interchangeable. Conversion rounds to nearest even.
struct bf16 {
  std::uint16_t bits = 0;

  static bf16 from_float(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    bf16 b;
    if (std::isnan(f)) {
      b.bits = static_cast<std::uint16_t>((u >> 16) | 0x40u);  // keep it a quiet NaN
      return b;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    b.bits = static_cast<std::uint16_t>(u >> 16);
    return b;
  }
  float to_float() const {
    std::uint32_t u = static_cast<std::uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};
static_assert(sizeof(bf16) == 2);

inline float to_float(float v) { return v; }
inline float to_float(bf16 v) { return v.to_float(); }
// Round a float through bf16 and back: what storing it as bf16 keeps.
inline float round_bf16(float v) { return bf16::from_float(v).to_float(); }

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<bf16>() { return DType::bf16; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<std::int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<std::int64_t>() { return DType::i64; }

}  // namespace tilemoe
