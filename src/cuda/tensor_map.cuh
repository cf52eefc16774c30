// TMA tensor maps (host side): a 2-D bf16 view of a row-major matrix whose boxes land in shared
// memory in the 128-byte swizzle that wgmma's descriptors read. The driver's encoder is reached
// through the runtime's entry-point query, so nothing links libcuda directly.
#pragma once
#include <cuda.h>

#include <cstdint>

namespace tilemoe::detail::gpu {

// rows x cols elements of bf16 at base (16-byte aligned), row stride ld elements (ld * 2 a
// multiple of 16); box: box_rows x 64 columns (128 bytes, the swizzle span). Out-of-bounds
// elements read as zero.
CUtensorMap make_tensor_map_bf16(const void* base, std::int64_t rows, std::int64_t cols, std::int64_t ld,
                                 int box_rows);

}  // namespace tilemoe::detail::gpu
