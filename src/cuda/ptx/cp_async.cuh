// cp.async (sm_80+): 16-byte global -> shared copies that bypass registers, committed in groups.
#pragma once
#include <cstdint>

namespace tilemoe::ptx {

// Copies src_bytes (0..16) from src and zero-fills the rest of the 16 bytes at dst.
__device__ __forceinline__ void cp_async_cg_16(std::uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}

// Copies 16 bytes from src to dst.
__device__ __forceinline__ void cp_async_cg_16(std::uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}

// Copies 16 bytes from src to dst, with a hint that L2 fetch the aligned kL2Bytes (64, 128 or 256)
// around them from memory (.L2::<n>B prefetch size).
template <int kL2Bytes>
__device__ __forceinline__ void cp_async_cg_16_l2(std::uint32_t dst, const void* src) {
  static_assert(kL2Bytes == 64 || kL2Bytes == 128 || kL2Bytes == 256, "prefetch sizes of PTX");
  if constexpr (kL2Bytes == 64)
    asm volatile("cp.async.cg.shared.global.L2::64B [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
  else if constexpr (kL2Bytes == 128)
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
  else
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async_commit_group() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// An arrival on the mbarrier at bar, made by the hardware once every cp.async this thread issued
// before it has completed (.noinc: the barrier's expected count must include it). The thread
// does not wait.
__device__ __forceinline__ void cp_async_mbarrier_arrive_noinc(std::uint64_t* bar) {
  const std::uint32_t a = static_cast<std::uint32_t>(__cvta_generic_to_shared(bar));
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(a) : "memory");
}

}  // namespace tilemoe::ptx
