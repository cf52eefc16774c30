// Tile-aware token rounding on the GPU: src/core/rounding.cpp's algorithm, reproduced exactly,
// with no host synchronization (the rounded routing's size stays on the device; the buffers have
// a host-known capacity, unused slots carry expert id E).
//   1. targets: one block; per-expert floor/ceil to tile multiples by the rule (the stochastic
//      draw is the same splitmix64 counter hash; balanced sorts experts by remainder in-block).
//   2. drops: a block per expert that loses assignments; an MSB radix select of its worst (prob
//      ascending, later tokens first among equal probs) over its sorted segment (block_best: on
//      many items, of a sample first, then of the few candidates the sample's bound leaves).
//   3. adds: a block per expert that gains tokens; the same selection of the best (prob
//      descending, token ascending) among the tokens that did not choose it.
//   4. the new routing, token by token: kept assignments in top-k order, then the added ones by
//      (prob descending, expert ascending) with weight = prob.
#include <algorithm>
#include <climits>
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "buffer.cuh"
#include "context.cuh"
#include "stages.hpp"

namespace tilemoe::detail::gpu {
namespace {

constexpr int kThreads = 1024, kItems = 4;  // targets: E <= 4096 in one block

__device__ __forceinline__ std::uint64_t splitmix64_at(std::uint64_t seed, std::uint64_t e) {
  std::uint64_t z = seed + (e + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__global__ void __launch_bounds__(kThreads) targets_kernel(const std::int32_t* __restrict__ counts, int E, std::int64_t T,
                                                          int M, RoundingRule rule, std::uint64_t seed,
                                                          std::int32_t* __restrict__ target) {
  using Reduce = cub::BlockReduce<long long, kThreads>;
  using Sort = cub::BlockRadixSort<unsigned, kThreads, kItems>;
  __shared__ union {
    typename Reduce::TempStorage reduce;
    typename Sort::TempStorage sort;
    struct {
      std::int32_t order[kThreads * kItems];  // experts in flip order
      std::int32_t c[kThreads * kItems];      // targets, while thread 0 walks the flips
    } walk;
  } sh;
  __shared__ long long D_shared;
  std::int32_t* order = sh.walk.order;
  long long f[kItems], lo[kItems], up[kItems], rem[kItems], c[kItems];
  long long dsum = 0;
  for (int i = 0; i < kItems; ++i) {
    const int e = threadIdx.x * kItems + i;
    f[i] = e < E ? counts[e] : 0;
    lo[i] = f[i] / M * M;
    rem[i] = f[i] - lo[i];
    up[i] = rem[i] > 0 ? min(lo[i] + M, static_cast<long long>(T)) : lo[i];
    if (e >= E || rem[i] == 0) {
      c[i] = f[i];
    } else if (rule == RoundingRule::up) {
      c[i] = up[i];
    } else if (rule == RoundingRule::down) {
      c[i] = lo[i];
    } else if (rule == RoundingRule::stochastic) {
      const double u = static_cast<double>(splitmix64_at(seed, e) >> 11) * 0x1.0p-53;
      c[i] = u < static_cast<double>(rem[i]) / static_cast<double>(M) ? up[i] : lo[i];
    } else {  // nearest, and balanced's start
      c[i] = 2 * rem[i] > M ? up[i] : lo[i];
    }
    dsum += c[i] - f[i];
  }
  if (rule == RoundingRule::balanced) {
    const long long D = Reduce(sh.reduce).Sum(dsum);
    if (threadIdx.x == 0) D_shared = D;
    __syncthreads();
    long long Dv = D_shared;
    if (2 * Dv > M || 2 * Dv < -M) {
      const bool down = 2 * Dv > M;  // down: flip rounded-up experts, smallest remainder first
      unsigned key[kItems];
      for (int i = 0; i < kItems; ++i) {
        const int e = threadIdx.x * kItems + i;
        const unsigned r = static_cast<unsigned>(down ? rem[i] : (M - 1 - rem[i]));
        key[i] = e < E ? (r << 13) | static_cast<unsigned>(e) : ~0u;  // ties: lower expert first
      }
      Sort(sh.sort).SortBlockedToStriped(key);
      __syncthreads();  // the sort's storage becomes the walk's
      for (int i = 0; i < kItems; ++i) order[i * kThreads + threadIdx.x] = static_cast<std::int32_t>(key[i] & 8191u);
      __syncthreads();
      for (int i = 0; i < kItems; ++i) sh.walk.c[threadIdx.x * kItems + i] = static_cast<std::int32_t>(c[i]);
      __syncthreads();
      if (threadIdx.x == 0) {
        for (int j = 0; j < E; ++j) {
          if (down ? 2 * Dv <= M : 2 * Dv >= -M) break;
          const int e = order[j];
          const long long fe = counts[e], le = fe / M * M, ue = min(le + M, static_cast<long long>(T));
          if (down && sh.walk.c[e] > fe) {
            Dv -= sh.walk.c[e] - le;
            sh.walk.c[e] = static_cast<std::int32_t>(le);
          } else if (!down && sh.walk.c[e] < fe) {
            Dv += ue - sh.walk.c[e];
            sh.walk.c[e] = static_cast<std::int32_t>(ue);
          }
        }
      }
      __syncthreads();
      for (int i = 0; i < kItems; ++i) c[i] = sh.walk.c[threadIdx.x * kItems + i];
    }
  }
  for (int i = 0; i < kItems; ++i) {
    const int e = threadIdx.x * kItems + i;
    if (e < E) target[e] = static_cast<std::int32_t>(c[i]);
  }
}

constexpr int kSelThreads = 512, kSelItems = 8;  // the ordered pass takes 4096 items per step
constexpr int kCandCap = kSelThreads * kSelItems;   // block_best: sample and candidates

// Dynamic shared memory of the selections: up to kSelCacheItems items, the block's ranking keys
// and a bit per item that takes no part ("excluded"), so that the passes over the items read
// global memory once; then room for kCandCap candidates (block_best).
constexpr std::int64_t kSelCacheItems = 32768;
__host__ __device__ inline std::size_t select_cache_words(std::int64_t n) {
  const std::size_t w = n <= kSelCacheItems ? static_cast<std::size_t>(n + (n + 31) / 32) : 0;
  return (w + 1) / 2 * 2;  // the candidates after it are 8-byte aligned
}
std::size_t select_smem_bytes(std::int64_t n) { return select_cache_words(n) * 4 + std::size_t(kCandCap) * 8; }

// Fills the key cache: every item's key and its excluded bit. With `marked` the caller has zeroed
// the bits and set some already.
template <class KeyOf>
__device__ void cache_keys(std::int64_t n, bool marked, KeyOf key_of) {
  extern __shared__ __align__(16) unsigned cache[];  // [n] keys, then [ceil(n / 32)] bits: excluded
  unsigned* excluded = cache + n;
  if (!marked) {
    for (std::int64_t w = threadIdx.x; w < (n + 31) / 32; w += blockDim.x) excluded[w] = 0;
    __syncthreads();
  }
  // Four items per thread in flight: the keys come from scattered global loads.
  for (std::int64_t b = 0; b < n; b += 4 * blockDim.x) {
    unsigned u[4];
    bool ok[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const std::int64_t i = b + q * blockDim.x + threadIdx.x;
      ok[q] = true;
      if (i < n) u[q] = key_of(i, ok[q]);
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const std::int64_t i = b + q * blockDim.x + threadIdx.x;
      if (i >= n) continue;
      cache[i] = u[q];
      if (!ok[q]) atomicOr(&excluded[i >> 5], 1u << (i & 31));
    }
  }
  __syncthreads();
}

// Item i's key from the cache (filled by cache_keys) or from key_of.
template <class KeyOf>
__device__ __forceinline__ unsigned item_key(std::int64_t n, bool cached, KeyOf& key_of, std::int64_t i, bool& ok) {
  extern __shared__ __align__(16) unsigned cache[];
  if (!cached) return key_of(i, ok);
  ok = !((cache[n + (i >> 5)] >> (i & 31)) & 1u);
  return cache[i];
}

// The R best of n items in one block: smallest key first, equal keys in index order. key_of(i,
// ok) gives item i's key and whether it takes part; take(i, key) is called once for each chosen
// item. With `cached`, cache_keys has run. An MSB radix select (4 passes of 8 bits) finds the
// R-th key; one ordered pass then takes every item below it and the first ties by index (a block
// scan over kSelItems consecutive items per thread). block_best's fallback.
template <class KeyOf, class Take>
__device__ void block_select(std::int64_t n, unsigned R, bool cached, KeyOf key_of, Take take) {
  using Scan = cub::BlockScan<int, kSelThreads>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ int hist[256];
  __shared__ unsigned prefix_s, need_s;
  __shared__ int running;
  auto key = [&](std::int64_t i, bool& ok) { return item_key(n, cached, key_of, i, ok); };
  unsigned prefix = 0, mask = 0, need = R;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    // Lanes whose keys fall in the same bin add once, together: the first pass's bins are the
    // keys' top bytes (a float's sign and exponent), which most keys share, and one shared-memory
    // atomic per key on a handful of addresses serialized the pass.
    for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      bool ok;
      const unsigned u = key(i, ok);
      const bool hit = ok && (u & mask) == prefix;
      const unsigned bin = hit ? (u >> shift) & 255u : 256u;
      const unsigned peers = __match_any_sync(__activemask(), bin);
      if (hit && (threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(&hist[bin], __popc(peers));
    }
    __syncthreads();
    // The bin that holds the need-th key: warp 0, 8 bins per lane, a scan across the lanes.
    if (threadIdx.x < 32) {
      const int lane = threadIdx.x;
      unsigned own = 0;
      for (int j = 0; j < 8; ++j) own += hist[lane * 8 + j];
      unsigned inc = own;
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned t = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += t;
      }
      const unsigned reach = __ballot_sync(0xffffffffu, inc >= need);
      const int L = reach ? __ffs(reach) - 1 : 31;
      if (lane == L) {
        unsigned cum = inc - own;
        int b = L * 8;
        for (; b < L * 8 + 7; ++b) {
          if (cum + hist[b] >= need) break;
          cum += hist[b];
        }
        prefix_s = prefix | (static_cast<unsigned>(b) << shift);
        need_s = need - cum;
      }
    }
    __syncthreads();
    prefix = prefix_s;
    need = need_s;
    mask |= 255u << shift;
    __syncthreads();
  }
  if (threadIdx.x == 0) running = 0;
  __syncthreads();
  constexpr int kStep = kSelThreads * kSelItems;
  for (std::int64_t base = 0; base < n; base += kStep) {
    unsigned u[kSelItems];
    bool ok[kSelItems];
    int tie[kSelItems], before[kSelItems], total;
#pragma unroll
    for (int q = 0; q < kSelItems; ++q) {
      const std::int64_t i = base + threadIdx.x * kSelItems + q;
      ok[q] = false;
      u[q] = 0;
      if (i < n) u[q] = key(i, ok[q]);
      tie[q] = ok[q] && u[q] == prefix ? 1 : 0;
    }
    Scan(scan).ExclusiveSum(tie, before, total);
#pragma unroll
    for (int q = 0; q < kSelItems; ++q) {
      const bool chosen = ok[q] && (u[q] < prefix || (tie[q] && static_cast<unsigned>(running + before[q]) < need));
      if (chosen) take(base + threadIdx.x * kSelItems + q, u[q]);
    }
    __syncthreads();
    if (threadIdx.x == 0) running += total;
    __syncthreads();
  }
}

// A candidate of block_best: its key in the high word, its index (< 2^20) in the low one; all
// ones for a sample slot that takes no part.
__device__ __forceinline__ unsigned long long candidate(unsigned key, std::int64_t i, bool ok) {
  return ok ? (static_cast<unsigned long long>(key) << 32) | static_cast<unsigned long long>(i) : ~0ull;
}

// block_select's result with fewer passes over the items where they are many: up to kCandCap
// items (an expert's drops, a small T), block_select itself. Above, a sample of at most kCandCap
// items (every s-th) goes through block_select, and the worst key it keeps bounds the R-th best
// of all the items (the sample alone has R items that good); one ordered pass collects the items
// no worse than that bound (~R s of them, in index order) and block_select picks among those.
// Where they would not fit (many equal keys), or the sample holds fewer than R items that take
// part, block_select runs over all the items.
template <class KeyOf, class Take>
__device__ void block_best(std::int64_t n, unsigned R, bool cached, KeyOf key_of, Take take) {
  if (n <= kCandCap || R > static_cast<unsigned>(kCandCap)) {
    block_select(n, R, cached, key_of, take);
    return;
  }
  using Scan = cub::BlockScan<int, kSelThreads>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ unsigned bound_s;
  __shared__ int kept_s;
  extern __shared__ __align__(16) unsigned cache[];
  unsigned long long* cand = reinterpret_cast<unsigned long long*>(cache + (cached ? select_cache_words(n) : 0));
  auto key = [&](std::int64_t i, bool& ok) { return item_key(n, cached, key_of, i, ok); };
  const std::int64_t s = (n + kCandCap - 1) / kCandCap, m = (n + s - 1) / s;
  for (std::int64_t j = threadIdx.x; j < m; j += blockDim.x) {
    bool ok = false;
    const unsigned u = key(j * s, ok);
    cand[j] = candidate(u, j * s, ok);
  }
  if (threadIdx.x == 0) bound_s = 0, kept_s = 0;
  __syncthreads();
  block_select(
      m, R, false,
      [&](std::int64_t j, bool& ok) {
        ok = cand[j] != ~0ull;
        return static_cast<unsigned>(cand[j] >> 32);
      },
      [&](std::int64_t, unsigned u) {
        atomicMax(&bound_s, u);
        atomicAdd(&kept_s, 1);
      });
  __syncthreads();
  if (kept_s < static_cast<int>(R)) {
    block_select(n, R, cached, key_of, take);
    return;
  }
  const unsigned bound = bound_s;
  std::int64_t count = 0;
  for (std::int64_t base = 0; base < n; base += kCandCap) {
    unsigned u[kSelItems];
    int keep[kSelItems], before[kSelItems], total;
#pragma unroll
    for (int q = 0; q < kSelItems; ++q) {
      const std::int64_t i = base + threadIdx.x * kSelItems + q;
      bool ok = false;
      u[q] = i < n ? key(i, ok) : 0u;
      keep[q] = i < n && ok && u[q] <= bound ? 1 : 0;
    }
    Scan(scan).ExclusiveSum(keep, before, total);
#pragma unroll
    for (int q = 0; q < kSelItems; ++q)
      if (keep[q] && count + before[q] < kCandCap)
        cand[count + before[q]] = candidate(u[q], base + threadIdx.x * kSelItems + q, true);
    count += total;
    __syncthreads();
  }
  if (count > kCandCap) {
    block_select(n, R, cached, key_of, take);
    return;
  }
  block_select(
      count, R, false,
      [&](std::int64_t c, bool& ok) {
        ok = true;
        return static_cast<unsigned>(cand[c] >> 32);
      },
      [&](std::int64_t c, unsigned u) { take(static_cast<std::int64_t>(cand[c] & 0xffffffffu), u); });
}

// One block per expert e that loses D = count - target assignments: its D worst, by probability
// ascending and, among equal probabilities, the later sorted positions first (the CPU keeps the
// earlier tokens). Items run from the segment's end; the key ~bits(~bits(prob)) = bits(prob)
// orders lower probabilities first.
__global__ void __launch_bounds__(kSelThreads, 2) drop_kernel(const std::int32_t* __restrict__ counts,
                                                           const std::int32_t* __restrict__ target,
                                                           const std::int64_t* __restrict__ offsets,
                                                           const std::int32_t* __restrict__ sorted,
                                                           const std::int32_t* __restrict__ sorted_token,
                                                           const float* __restrict__ probs, int E, bool cached,
                                                           unsigned char* __restrict__ dropped) {
  const int e = blockIdx.x;
  const int D = counts[e] - target[e];
  if (D <= 0) return;
  const std::int64_t last = offsets[e + 1] - 1, n = counts[e];
  auto key_of = [&](std::int64_t i, bool& ok) {
    ok = true;
    return __float_as_uint(probs[std::int64_t(sorted_token[last - i]) * E + e]);
  };
  if (cached) cache_keys(n, false, key_of);  // the selection passes read them from shared memory
  block_best(n, static_cast<unsigned>(D), cached, key_of,
             [&](std::int64_t i, unsigned) { dropped[sorted[last - i]] = 1; });
}

// One block per expert e that gains R = target - count tokens: the R best (prob descending,
// token ascending) tokens that did not choose e. With the keys cached, the tokens that chose e
// (its sorted segment, ~T K / E of them) are marked excluded up front; otherwise every token's K
// ids are read in each pass.
__global__ void __launch_bounds__(kSelThreads, 2) add_kernel(const std::int32_t* __restrict__ counts,
                                                          const std::int32_t* __restrict__ target,
                                                          const std::int32_t* __restrict__ ids,
                                                          const std::int64_t* __restrict__ offsets,
                                                          const std::int32_t* __restrict__ sorted_token,
                                                          const float* __restrict__ probs, std::int64_t T, int K, int E,
                                                          bool cached, unsigned long long* __restrict__ added,
                                                          int* __restrict__ n_added,
                                                          std::int32_t* __restrict__ added_per_token,
                                                          int r_cap, std::int32_t* __restrict__ add_tok,
                                                          int* __restrict__ add_n) {
  const int e = blockIdx.x;
  const int R = target[e] - counts[e];
  if (R <= 0) return;  // add_n[e] stays 0 (zeroed before the launch)
  __shared__ int taken;
  if (threadIdx.x == 0) taken = 0;
  __syncthreads();
  auto key_of = [&](std::int64_t t, bool& ok) {
    ok = true;
    if (!cached)
      for (int k = 0; k < K; ++k)
        if (ids[t * K + k] == e) ok = false;
    return ~__float_as_uint(probs[t * E + e]);
  };
  if (cached) {
    extern __shared__ __align__(16) unsigned cache[];
    unsigned* excluded = cache + T;
    for (std::int64_t w = threadIdx.x; w < (T + 31) / 32; w += blockDim.x) excluded[w] = 0;
    __syncthreads();
    for (std::int64_t i = offsets[e] + threadIdx.x; i < offsets[e + 1]; i += blockDim.x) {
      const std::int32_t t = sorted_token[i];
      atomicOr(&excluded[t >> 5], 1u << (t & 31));
    }
    __syncthreads();
    cache_keys(T, true, key_of);
  }
  block_best(
      T, static_cast<unsigned>(R), cached, key_of,
      [&](std::int64_t t, unsigned u) {
        const int slot = atomicAdd(n_added, 1);
        added[slot] = (static_cast<unsigned long long>(t) << 44) | (static_cast<unsigned long long>(u) << 12) |
                      static_cast<unsigned long long>(e);
        atomicAdd(&added_per_token[t], 1);
        const int r = atomicAdd(&taken, 1);  // the expert's own list, in no order (r < R < tile)
        add_tok[std::int64_t(e) * r_cap + r] = static_cast<std::int32_t>(t);
      });
  __syncthreads();
  if (threadIdx.x == 0) add_n[e] = taken;
}

// The rounded routing's metadata, built from the top-k metadata instead of a second sort: expert
// e's rounded segment is its kept top-k assignments and its added tokens, one per token, so in
// token order (the rounded routing is token-major, and the metadata's sort is stable). A block per
// expert marks its tokens in a bitmap of T bits in shared memory and scans the words' popcounts;
// then each marked token t takes position j = offsets[e] + (marked tokens before t), and its
// assignment p is where e stands in t's row of the rounded routing (write_kernel's output).
// Unused slots (p >= the total) follow in order, as build_metadata sorts them. offsets and
// tile_offsets are scanned already.
constexpr int kMetaThreads = 512, kMetaItems = 4;
constexpr std::int64_t kRoundedMetaTokens = std::int64_t(1) << 18;  // 64 KiB of shared memory
__global__ void __launch_bounds__(kMetaThreads) rounded_metadata_kernel(
    Metadata topk, const unsigned char* __restrict__ dropped, const std::int32_t* __restrict__ add_tok,
    const int* __restrict__ add_n, int r_cap, const std::int32_t* __restrict__ expert_out,
    const std::int64_t* __restrict__ token_offsets, std::int64_t T, int E, std::int64_t A_cap,
    const std::int32_t* __restrict__ target, Metadata out) {
  using Scan = cub::BlockScan<unsigned, kMetaThreads>;
  __shared__ typename Scan::TempStorage scan;
  extern __shared__ __align__(16) unsigned bits[];  // [W] the segment's tokens, then [W] marked before each word
  const std::int64_t W = (T + 31) / 32;
  unsigned* before_word = bits + W;
  const int e = blockIdx.x;
  const std::int64_t total = out.offsets[E];
  for (std::int64_t j = total + blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; j < A_cap;
       j += std::int64_t(gridDim.x) * blockDim.x) {
    out.sorted[j] = static_cast<std::int32_t>(j);
    out.slot[j] = static_cast<std::int32_t>(j);
    out.sorted_token[j] = 0;
  }
  if (threadIdx.x == 0) out.counts[e] = target[e];
  if (target[e] == 0) return;
  for (std::int64_t w = threadIdx.x; w < W; w += blockDim.x) bits[w] = 0;
  __syncthreads();
  const std::int64_t o = topk.offsets[e], c = topk.counts[e];
  const std::int32_t* tok = add_tok + std::int64_t(e) * r_cap;
  for (std::int64_t i = o + threadIdx.x; i < o + c; i += blockDim.x)
    if (!dropped[topk.sorted[i]]) {
      const std::int32_t t = topk.sorted_token[i];
      atomicOr(&bits[t >> 5], 1u << (t & 31));
    }
  for (int r = threadIdx.x; r < add_n[e]; r += blockDim.x) atomicOr(&bits[tok[r] >> 5], 1u << (tok[r] & 31));
  __syncthreads();
  unsigned running = 0;
  for (std::int64_t base = 0; base < W; base += kMetaThreads * kMetaItems) {
    unsigned v[kMetaItems], sum;
#pragma unroll
    for (int q = 0; q < kMetaItems; ++q) {
      const std::int64_t w = base + threadIdx.x * kMetaItems + q;
      v[q] = w < W ? __popc(bits[w]) : 0u;
    }
    Scan(scan).ExclusiveSum(v, v, sum);
#pragma unroll
    for (int q = 0; q < kMetaItems; ++q) {
      const std::int64_t w = base + threadIdx.x * kMetaItems + q;
      if (w < W) before_word[w] = running + v[q];
    }
    running += sum;
    __syncthreads();
  }
  for (std::int64_t w = threadIdx.x; w < W; w += blockDim.x) {
    std::int64_t j = out.offsets[e] + before_word[w];
    for (unsigned m = bits[w]; m; m &= m - 1, ++j) {
      const std::int32_t t = static_cast<std::int32_t>(w * 32 + __ffs(m) - 1);
      std::int64_t p = token_offsets[t];
      while (expert_out[p] != e) ++p;
      out.sorted[j] = static_cast<std::int32_t>(p);
      out.slot[p] = static_cast<std::int32_t>(j);
      out.sorted_token[j] = t;
    }
  }
}

__global__ void token_counts_kernel(const unsigned char* __restrict__ dropped, const std::int32_t* __restrict__ added,
                                    std::int64_t T, int K, std::int64_t* __restrict__ count) {
  for (std::int64_t t = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; t <= T;
       t += std::int64_t(gridDim.x) * blockDim.x) {
    if (t == T) { count[T] = 0; continue; }
    int kept = 0;
    for (int k = 0; k < K; ++k) kept += dropped[t * K + k] ? 0 : 1;
    count[t] = kept + added[t];
  }
}

__global__ void write_kernel(const unsigned char* __restrict__ dropped, const std::int32_t* __restrict__ ids,
                             const float* __restrict__ weights, const unsigned long long* __restrict__ added,
                             std::int64_t n_cap, const std::int64_t* __restrict__ offsets, std::int64_t T, int K,
                             std::int64_t A_cap, int E, std::int32_t* __restrict__ expert_out,
                             float* __restrict__ weight_out, std::int32_t* __restrict__ token_of) {
  const std::int64_t total = offsets[T];
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < A_cap;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    if (i < T) {
      const std::int64_t t = i;
      std::int64_t p = offsets[t];
      for (int k = 0; k < K; ++k) {
        const std::int64_t a = t * K + k;
        if (dropped[a]) continue;
        expert_out[p] = ids[a];
        weight_out[p] = weights[a];
        token_of[p] = static_cast<std::int32_t>(t);
        ++p;
      }
      // This token's added experts: the keys (t << 44 | ~prob << 12 | e), sorted by t only, from
      // t << 44; emitted by their low 44 bits (prob descending, expert ascending), a few at most.
      const unsigned long long lo_key = static_cast<unsigned long long>(t) << 44, low = (1ull << 44) - 1;
      std::int64_t l = 0, h = n_cap;
      while (l < h) {
        const std::int64_t m = (l + h) >> 1;
        if (added[m] < lo_key) l = m + 1; else h = m;
      }
      std::int64_t r = l;
      while (r < n_cap && (added[r] >> 44) == static_cast<unsigned long long>(t)) ++r;
      unsigned long long prev = 0;
      for (std::int64_t c = l; c < r; ++c) {
        unsigned long long best = ~0ull;
        for (std::int64_t j = l; j < r; ++j) {
          const unsigned long long v = added[j] & low;
          if ((c == l || v > prev) && v < best) best = v;
        }
        prev = best;
        expert_out[p] = static_cast<std::int32_t>(best & 4095u);
        weight_out[p] = __uint_as_float(~static_cast<unsigned>(best >> 12));
        token_of[p] = static_cast<std::int32_t>(t);
        ++p;
      }
    }
    if (i >= total) {  // unused slots
      expert_out[i] = E;
      weight_out[i] = 0.0f;
      token_of[i] = 0;
    }
  }
}

struct Scratch {
  unsigned char* dropped;
  unsigned long long* added;
  unsigned long long* added_out;
  int* n_added;
  std::int32_t* added_per_token;
  std::int32_t* add_tok;  // [E][tile - 1] each expert's added tokens (add_kernel), in no order
  int* add_n;             // [E] how many
  std::int64_t* tcount;
  void* cub;
  std::size_t cub_bytes;
};

int bits_for(std::uint64_t v) {
  int b = 1;
  while (b < 64 && (std::uint64_t(1) << b) <= v) ++b;
  return b;
}

Scratch carve(void* base, std::int64_t T, int K, int E, int tile, std::size_t* bytes = nullptr) {
  const std::int64_t A = T * K, n_cap = std::int64_t(E) * (tile - 1);
  std::size_t b2 = 0, b3 = 0;
  cudaStream_t st = current_stream();
  TILEMOE_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, b2, static_cast<const unsigned long long*>(nullptr),
                                                    static_cast<unsigned long long*>(nullptr),
                                                    static_cast<int>(std::max<std::int64_t>(n_cap, 1)), 44,
                                                    44 + bits_for(T), st));
  TILEMOE_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, b3, static_cast<const std::int64_t*>(nullptr),
                                                   static_cast<std::int64_t*>(nullptr), static_cast<int>(T + 1), st));
  Carver c(base);
  Scratch s;
  s.dropped = c.take<unsigned char>(A);
  s.added = c.take<unsigned long long>(std::max<std::int64_t>(n_cap, 1));
  s.added_out = c.take<unsigned long long>(std::max<std::int64_t>(n_cap, 1));
  s.n_added = c.take<int>(1);
  s.added_per_token = c.take<std::int32_t>(T);
  const std::int64_t lists = std::max<std::int64_t>(std::int64_t(E) * (tile - 1), 1);
  s.add_tok = c.take<std::int32_t>(lists);
  s.add_n = c.take<int>(E);
  s.tcount = c.take<std::int64_t>(T + 1);
  s.cub_bytes = std::max(b2, b3);
  s.cub = c.take<unsigned char>(s.cub_bytes);
  if (bytes) *bytes = c.bytes();
  return s;
}

int blocks_for(std::int64_t items, int threads) {
  return static_cast<int>(std::max<std::int64_t>(
      1, std::min<std::int64_t>((items + threads - 1) / threads, std::int64_t(device_props().sm_count) * 16)));
}

}  // namespace

std::int64_t rounding_capacity(std::int64_t T, int K, int E, int tile) { return T * K + std::int64_t(E) * (tile - 1); }

std::size_t rounding_scratch_bytes(std::int64_t T, int K, int E, int tile) {
  std::size_t bytes = 0;
  carve(nullptr, T, K, E, tile, &bytes);
  return bytes;
}

bool round_routing(const RoundingOptions& opt, std::int64_t T, int K, int E, const std::int32_t* ids,
                   const float* weights, const float* probs, const Metadata& topk, std::int32_t* expert_out,
                   float* weight_out, std::int32_t* token_of, std::int64_t* token_offsets, std::int32_t* target,
                   void* scratch, std::size_t scratch_bytes, int tile_m, const Metadata* rounded) {
  opt.validate();
  check_arg(E >= 1 && E <= 4096, "num_experts", E, "<= 4096 for token rounding on the GPU");
  check_arg(T < (std::int64_t(1) << 20), "tokens", T, "< 2^20 for token rounding on the GPU");
  check_arg(opt.tile <= (1 << 19), "tile", opt.tile, "<= 2^19 on the GPU");
  check_arg(scratch_bytes >= rounding_scratch_bytes(T, K, E, opt.tile), "rounding scratch", scratch_bytes,
            "rounding_scratch_bytes()");
  const std::int64_t A = T * K, n_cap = std::int64_t(E) * (opt.tile - 1), A_cap = rounding_capacity(T, K, E, opt.tile);
  Scratch s = carve(scratch, T, K, E, opt.tile);
  cudaStream_t st = current_stream();
  targets_kernel<<<1, kThreads, 0, st>>>(topk.counts, E, T, opt.tile, opt.rule, opt.seed, target);
  TILEMOE_CHECK_LAUNCH();
  // Dropped marks: zero, then one block per losing expert marks its worst assignments.
  // The selections' shared memory: keys cached up to kSelCacheItems tokens (counts[e] <= T).
  const bool cached = T <= kSelCacheItems;
  const std::size_t cache = select_smem_bytes(T);
  TILEMOE_CUDA_CHECK(cudaFuncSetAttribute(drop_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(cache)));
  TILEMOE_CUDA_CHECK(cudaFuncSetAttribute(add_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(cache)));
  if (A > 0) {
    TILEMOE_CUDA_CHECK(cudaMemsetAsync(s.dropped, 0, static_cast<std::size_t>(A), st));
    drop_kernel<<<E, kSelThreads, cache, st>>>(topk.counts, target, topk.offsets, topk.sorted, topk.sorted_token, probs,
                                               E, cached, s.dropped);
    TILEMOE_CHECK_LAUNCH();
  }
  TILEMOE_CUDA_CHECK(cudaMemsetAsync(s.added, 0xff, sizeof(unsigned long long) * std::max<std::int64_t>(n_cap, 1), st));
  TILEMOE_CUDA_CHECK(cudaMemsetAsync(s.n_added, 0, sizeof(int), st));
  TILEMOE_CUDA_CHECK(cudaMemsetAsync(s.added_per_token, 0, sizeof(std::int32_t) * T, st));
  TILEMOE_CUDA_CHECK(cudaMemsetAsync(s.add_n, 0, sizeof(int) * E, st));
  const int r_cap = opt.tile - 1;
  if (n_cap > 0) {
    add_kernel<<<E, kSelThreads, cache, st>>>(topk.counts, target, ids, topk.offsets, topk.sorted_token, probs, T, K,
                                              E, cached, s.added, s.n_added, s.added_per_token, r_cap, s.add_tok,
                                              s.add_n);
    TILEMOE_CHECK_LAUNCH();
    TILEMOE_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(s.cub, s.cub_bytes, s.added, s.added_out, static_cast<int>(n_cap),
                                                      44, 44 + bits_for(T), st));
  }
  token_counts_kernel<<<blocks_for(T + 1, 256), 256, 0, st>>>(s.dropped, s.added_per_token, T, K, s.tcount);
  TILEMOE_CHECK_LAUNCH();
  TILEMOE_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(s.cub, s.cub_bytes, s.tcount, token_offsets, static_cast<int>(T + 1), st));
  write_kernel<<<blocks_for(A_cap, 256), 256, 0, st>>>(s.dropped, ids, weights, n_cap > 0 ? s.added_out : s.added,
                                                       n_cap > 0 ? n_cap : 0, token_offsets, T, K, A_cap, E, expert_out,
                                                       weight_out, token_of);
  TILEMOE_CHECK_LAUNCH();
  // The rounded routing's metadata, from the top-k one (rounded_metadata_kernel): its bitmap of T
  // bits and their scan in shared memory, up to kRoundedMetaTokens tokens.
  if (!rounded || T > kRoundedMetaTokens) return false;
  metadata_offsets(target, E, tile_m, rounded->offsets, rounded->tile_offsets);
  const std::size_t smem = static_cast<std::size_t>((T + 31) / 32) * 2 * sizeof(unsigned);
  if (smem > 48 * 1024)
    TILEMOE_CUDA_CHECK(cudaFuncSetAttribute(rounded_metadata_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem)));
  rounded_metadata_kernel<<<E, kMetaThreads, smem, st>>>(topk, s.dropped, s.add_tok, s.add_n, r_cap, expert_out,
                                                        token_offsets, T, E, A_cap, target, *rounded);
  TILEMOE_CHECK_LAUNCH();
  return true;
}

}  // namespace tilemoe::detail::gpu
