// cp.async (sm_80+): 16-byte global -> shared copies that bypass registers, committed in groups.
#pragma once
#include <cstdint>

namespace tilemoe::ptx {

// Copies src_bytes (0..16) from src and zero-fills the rest of the 16 bytes at dst.
__device__ __forceinline__ void cp_async_cg_16(std::uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit_group() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

}  // namespace tilemoe::ptx
