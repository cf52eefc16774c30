// Hopper (sm_90) pipeline primitives over cuda::ptx: mbarrier waits, 2-D TMA tile loads that
// complete on an mbarrier, and the warpgroup controls of warp-specialized kernels (register
// reallocation, named barriers). One thin wrapper per instruction.
#pragma once
#include <cuda/ptx>

#include <cstdint>

namespace tilemoe::ptx {

__device__ __forceinline__ void mbarrier_init(std::uint64_t* bar, std::uint32_t count) {
  cuda::ptx::mbarrier_init(bar, count);
}
// Makes the initialized barriers visible to the async proxy (TMA) and to the other threads
// (followed by a block barrier).
__device__ __forceinline__ void fence_barrier_init() {
  cuda::ptx::fence_mbarrier_init(cuda::ptx::sem_release, cuda::ptx::scope_cluster);
}
// Spins until the barrier's phase with this parity has completed.
__device__ __forceinline__ void mbarrier_wait(std::uint64_t* bar, std::uint32_t parity) {
  while (!cuda::ptx::mbarrier_try_wait_parity(bar, parity)) {
  }
}
__device__ __forceinline__ void mbarrier_arrive(std::uint64_t* bar) { (void)cuda::ptx::mbarrier_arrive(bar); }
// Arrives and adds `bytes` to the transaction count the phase waits for (the TMA loads' bytes).
__device__ __forceinline__ void mbarrier_arrive_expect_tx(std::uint64_t* bar, std::uint32_t bytes) {
  (void)cuda::ptx::mbarrier_arrive_expect_tx(cuda::ptx::sem_release, cuda::ptx::scope_cta, cuda::ptx::space_shared,
                                             bar, bytes);
}

// TMA: the box at (inner, outer) of a 2-D tensor map into shared memory at dst; completes on bar
// (box bytes are counted, out-of-bounds elements are zero-filled and counted too).
__device__ __forceinline__ void tma_load_2d(void* dst, const void* tensor_map, int inner, int outer,
                                            std::uint64_t* bar) {
  const std::int32_t coords[2] = {inner, outer};
  cuda::ptx::cp_async_bulk_tensor(cuda::ptx::space_cluster, cuda::ptx::space_global, dst, tensor_map, coords, bar);
}

// The same load into the shared memory of every block of the cluster in cta_mask (bit r: rank
// r), at dst's offset in each, completing on the barrier at bar's offset in each (sm_90a).
__device__ __forceinline__ void tma_load_2d_multicast(void* dst, const void* tensor_map, int inner, int outer,
                                                      std::uint64_t* bar, std::uint16_t cta_mask) {
  const std::int32_t coords[2] = {inner, outer};
  cuda::ptx::cp_async_bulk_tensor(cuda::ptx::space_cluster, cuda::ptx::space_global, dst, tensor_map, coords, bar,
                                  cta_mask);
}

// Thread block clusters (sm_90): this block's rank in its cluster, the cluster's index and the
// clusters in the grid (x), a barrier over all threads of the cluster (arrive with release, wait
// with acquire; exited threads count as arrived), and an arrival on a barrier in another block's
// shared memory (its address in that block: mapa), with the default release at CTA scope: a
// consumer warp's stage release only says that its wgmma reads are done (waited for); a
// cluster-scope release cost the clustered up-projection 37% (H200 run 115).
__device__ __forceinline__ std::uint32_t cluster_ctarank() { return cuda::ptx::get_sreg_cluster_ctarank(); }
__device__ __forceinline__ std::uint32_t cluster_id_x() { return cuda::ptx::get_sreg_clusterid_x(); }
__device__ __forceinline__ std::uint32_t cluster_count_x() { return cuda::ptx::get_sreg_nclusterid_x(); }
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}
__device__ __forceinline__ void mbarrier_arrive_remote(std::uint64_t* bar, std::uint32_t rank) {
  const std::uint32_t local = static_cast<std::uint32_t>(__cvta_generic_to_shared(bar));
  std::uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(local), "r"(rank));
  asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];\n" ::"r"(remote) : "memory");
}

// TMA store: the box at (inner, outer) of a 2-D tensor map from shared memory at src (laid out
// as the map's swizzle says); elements outside the tensor are not written. Asynchronous: it joins
// the thread's current bulk group (bulk_commit_group), and src may be rewritten once
// bulk_wait_group_read<0> has returned in the issuing thread. The writes to src must be fenced
// for the async proxy first (fence_proxy_async_shared in each writing thread, then a barrier).
__device__ __forceinline__ void tma_store_2d(const void* tensor_map, int inner, int outer, const void* src) {
  const std::int32_t coords[2] = {inner, outer};
  cuda::ptx::cp_async_bulk_tensor(cuda::ptx::space_global, cuda::ptx::space_shared, tensor_map, coords, src);
}
__device__ __forceinline__ void bulk_commit_group() { cuda::ptx::cp_async_bulk_commit_group(); }
// The issuing thread's bulk groups have finished reading their shared-memory sources.
__device__ __forceinline__ void bulk_wait_group_read_all() { cuda::ptx::cp_async_bulk_wait_group_read(cuda::ptx::n32_t<0>{}); }
// The issuing thread's bulk groups are complete (their global writes performed).
__device__ __forceinline__ void bulk_wait_group_all() { cuda::ptx::cp_async_bulk_wait_group(cuda::ptx::n32_t<0>{}); }

// Orders this thread's generic-proxy and async-proxy (TMA) accesses to global memory: between a
// TMA store's completion and the release that publishes it, and between the acquire that finds
// data published and the TMA loads that read it.
__device__ __forceinline__ void fence_proxy_async_global() { cuda::ptx::fence_proxy_async(cuda::ptx::space_global); }
// A load of *p with acquire semantics at GPU scope (a flag another block releases).
__device__ __forceinline__ int ld_acquire_gpu(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
// Adds v to *p with release semantics at GPU scope: this thread's earlier writes, and those it
// has observed (a barrier before it), are visible to whoever acquires the new value.
__device__ __forceinline__ void red_release_gpu_add(int* p, int v) {
  asm volatile("red.release.gpu.global.add.s32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}

// Register reallocation between warpgroups (sm_90a; the kernel needs __launch_bounds__(n, 1)).
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// Barrier `id` (1..15; 0 is __syncthreads) over `threads` threads, e.g. one warpgroup.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace tilemoe::ptx
