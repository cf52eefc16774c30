// Each GPU stage against its CPU counterpart on identical inputs: the fused router (every kind,
// E up to 1024, K up to 16, ties), the metadata (counts, offsets, stable sort, inverse map), the
// combine, and the grouped expert GEMMs. The metadata also on synthetic routings (unused slots,
// empty experts, one expert) around the limits of its one-block path for small A.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <random>
#include <string>

#include "gpu_test_util.hpp"

#if TILEMOE_WITH_CUDA
#include "cuda/heuristics.hpp"
#include "cuda/stages.hpp"
#endif

using namespace tilemoe;
using tilemoe::test::fresh_seed;

#if TILEMOE_WITH_CUDA
namespace {

Tensor dev_f32(const std::vector<float>& v) {
  return Tensor::from_floats({static_cast<std::int64_t>(v.size())}, v).to(Device::cuda);
}
Tensor dev_i32(const std::vector<std::int32_t>& v) {
  Tensor h = Tensor::empty({static_cast<std::int64_t>(v.size())}, DType::i32);
  std::copy(v.begin(), v.end(), h.data<std::int32_t>());
  return h.to(Device::cuda);
}
template <class T>
std::vector<T> host(const Tensor& t) {
  Tensor h = t.to(Device::cpu);
  return std::vector<T>(h.data<T>(), h.data<T>() + h.numel());
}

// Logits with many exact ties (a few distinct values) or continuous ones.
std::vector<float> random_logits(std::int64_t T, int E, bool ties, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> v(static_cast<std::size_t>(T * E));
  for (auto& x : v) x = ties ? std::round(nd(g)) * 0.5f : nd(g);
  return v;
}

void check_router(const RouterConfig& rc, std::int64_t T, bool ties, bool with_bias) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(std::string(to_string(rc.kind)) + " E=" + std::to_string(rc.num_experts) + " K=" +
               std::to_string(rc.top_k) + " groups=" + std::to_string(rc.n_groups) + "/" +
               std::to_string(rc.topk_groups) + (ties ? " ties" : "") + " seed=" + std::to_string(seed));
  const int E = rc.num_experts, K = rc.top_k;
  const std::vector<float> logits = random_logits(T, E, ties, seed);
  std::vector<float> bias;
  if (with_bias) {
    std::mt19937_64 g(seed + 7);
    std::uniform_int_distribution<int> u(-4, 4);
    for (int e = 0; e < E; ++e) bias.push_back(0.01f * u(g));
  }
  const Routing cpu = route(rc, logits.data(), T, with_bias ? bias.data() : nullptr);
  Tensor ld = dev_f32(logits), bd = with_bias ? dev_f32(bias) : Tensor();
  Tensor ids = Tensor::empty({T * K}, DType::i32, Device::cuda);
  Tensor wts = Tensor::empty({T * K}, DType::f32, Device::cuda);
  detail::gpu::router_topk(rc, ld.data<float>(), with_bias ? bd.data<float>() : nullptr, T,
                           ids.data<std::int32_t>(), wts.data<float>());
  const auto gi = host<std::int32_t>(ids);
  const auto gw = host<float>(wts);
  // The CPU's choice score of expert e for token t, to tell a true tie from a wrong pick.
  auto choice = [&](std::int64_t t, int e) {
    const float l = logits[t * E + e];
    if (rc.kind != RouterKind::sigmoid_group_topk) return static_cast<double>(l);
    return 1.0 / (1.0 + std::exp(-static_cast<double>(l))) + (with_bias ? bias[e] : 0.0);
  };
  // Group score (sum of the two best choice scores) of expert e's group, for group-level ties.
  auto group_score = [&](std::int64_t t, int e) {
    const int gsz = E / rc.n_groups, g0 = e / gsz * gsz;
    std::vector<double> v;
    for (int j = g0; j < g0 + gsz; ++j) v.push_back(choice(t, j));
    std::sort(v.rbegin(), v.rend());
    return v[0] + (gsz > 1 ? v[1] : 0.0);
  };
  std::int64_t wrong = 0, near_ties = 0;
  double max_werr = 0;
  for (std::int64_t t = 0; t < T; ++t) {
    bool same_ids = true;
    for (int k = 0; k < K; ++k) {
      const int a = cpu.expert[t * K + k], b = gi[t * K + k];
      if (a == b) continue;
      same_ids = false;
      const bool tie = std::abs(choice(t, a) - choice(t, b)) <= 1e-6 ||
                       (rc.kind == RouterKind::sigmoid_group_topk && rc.topk_groups < rc.n_groups &&
                        std::abs(group_score(t, a) - group_score(t, b)) <= 1e-6);
      if (tie) ++near_ties; else ++wrong;
    }
    if (!same_ids) continue;
    for (int k = 0; k < K; ++k) {
      const double c = cpu.weight[t * K + k], g = gw[t * K + k];
      max_werr = std::max(max_werr, std::abs(c - g) / std::max(std::abs(c), 1e-30));
    }
  }
  EXPECT_EQ(wrong, 0);
  EXPECT_LE(near_ties, T * K / 100 + 1) << "too many near-tie differences";
  EXPECT_LT(max_werr, 1e-6);
  static double worst = 0;
  if (max_werr > worst) {
    worst = max_werr;
    std::printf("router: largest relative weight difference so far %.3g\n", worst);
  }
  if (rc.kind != RouterKind::sigmoid_group_topk) EXPECT_EQ(near_ties, 0) << "the softmax routers select on the logits themselves";

  // The same pass asked for the probabilities too (token rounding's input): the same choices and
  // weights, and router_probs's probabilities bit for bit.
  Tensor ids2 = Tensor::empty({T * K}, DType::i32, Device::cuda);
  Tensor wts2 = Tensor::empty({T * K}, DType::f32, Device::cuda);
  Tensor pr = Tensor::empty({T * E}, DType::f32, Device::cuda);
  Tensor pr_ref = Tensor::empty({T * E}, DType::f32, Device::cuda);
  detail::gpu::router_topk(rc, ld.data<float>(), with_bias ? bd.data<float>() : nullptr, T,
                           ids2.data<std::int32_t>(), wts2.data<float>(), 1, pr.data<float>());
  detail::gpu::router_probs(rc, ld.data<float>(), T, pr_ref.data<float>());
  EXPECT_EQ(host<std::int32_t>(ids2), gi);
  EXPECT_EQ(host<float>(wts2), gw);
  const auto gp = host<float>(pr), rp = host<float>(pr_ref);
  std::int64_t differ = 0;
  for (std::size_t i = 0; i < gp.size(); ++i) differ += gp[i] == rp[i] ? 0 : 1;
  EXPECT_EQ(differ, 0) << "probabilities from the top-k pass differ from router_probs's";
}

}  // namespace

TEST(GpuRouter, AllKindsMatchCpu) {
  TILEMOE_REQUIRE_GPU();
  for (int E : {1, 8, 37, 128, 256, 1024})
    for (int K : {1, 2, 8, 16}) {
      if (K > E || (test::sanitizing() && (E > 128 || K == 2))) continue;
      for (bool ties : {false, true}) {
        RouterConfig rc;
        rc.num_experts = E;
        rc.top_k = K;
        rc.kind = RouterKind::softmax_topk;
        rc.renormalize = true;
        check_router(rc, 301, ties, false);
        rc.renormalize = false;
        rc.routed_scale = 2.5f;
        check_router(rc, 301, ties, false);
        rc.routed_scale = 1.0f;
        rc.kind = RouterKind::topk_softmax;
        check_router(rc, 301, ties, false);
        if (K == 1) {
          rc.kind = RouterKind::top1;
          check_router(rc, 301, ties, false);
        }
        rc.kind = RouterKind::sigmoid_group_topk;
        rc.renormalize = true;
        rc.routed_scale = 2.5f;
        rc.n_groups = 1;
        rc.topk_groups = 1;
        check_router(rc, 301, ties, true);
        if (E % 8 == 0 && K <= 4 * (E / 8)) {
          rc.n_groups = 8;
          rc.topk_groups = 4;
          check_router(rc, 301, ties, true);
        }
        if (E >= 32 && E % 32 == 0 && K <= E / 2) {  // many groups of one or two experts
          rc.n_groups = E / 2;
          rc.topk_groups = E / 4;
          check_router(rc, 301, ties, true);
        }
      }
    }
}

TEST(GpuRouter, ProbabilitiesMatchCpu) {
  TILEMOE_REQUIRE_GPU();
  for (RouterKind kind : {RouterKind::softmax_topk, RouterKind::sigmoid_group_topk}) {
    RouterConfig rc;
    rc.kind = kind;
    rc.num_experts = 200;
    rc.top_k = 4;
    const std::int64_t T = 77;
    const auto logits = random_logits(T, 200, false, fresh_seed());
    const auto cpu = router_probabilities(rc, logits.data(), T);
    Tensor ld = dev_f32(logits);
    Tensor p = Tensor::empty({T * 200}, DType::f32, Device::cuda);
    detail::gpu::router_probs(rc, ld.data<float>(), T, p.data<float>());
    const auto g = host<float>(p);
    for (std::size_t i = 0; i < g.size(); ++i) ASSERT_NEAR(g[i], cpu[i], 1e-6 * std::max(1.0f, cpu[i]));
  }
}

TEST(GpuMetadata, MatchesCpu) {
  TILEMOE_REQUIRE_GPU();
  for (auto [T, E, K] : {std::tuple<std::int64_t, int, int>{1, 8, 2}, {3, 64, 4}, {1000, 13, 3}, {777, 1, 1},
                         {5000, 256, 8}, {20000, 1024, 16}, {4096, 4096, 2}, {64, 256, 8}, {1024, 1024, 16}}) {
    if (test::sanitizing() && T > 5000) continue;
    const std::uint64_t seed = fresh_seed();
    SCOPED_TRACE("T=" + std::to_string(T) + " E=" + std::to_string(E) + " K=" + std::to_string(K) +
                 " seed=" + std::to_string(seed));
    RouterConfig rc;
    rc.num_experts = E;
    rc.top_k = K;
    const auto logits = random_logits(T, E, false, seed);
    const Routing r = route(rc, logits.data(), T);
    const RoutingMetadata cm = build_metadata(r);
    const std::int64_t A = r.num_assignments();
    const int tile = detail::gpu::grouped_tile_m();
    Tensor ids = dev_i32(r.expert);
    Tensor counts = Tensor::empty({E}, DType::i32, Device::cuda);
    Tensor offsets = Tensor::empty({E + 1}, DType::i64, Device::cuda);
    Tensor tiles = Tensor::empty({E + 1}, DType::i32, Device::cuda);
    Tensor sorted = Tensor::empty({A}, DType::i32, Device::cuda);
    Tensor slot = Tensor::empty({A}, DType::i32, Device::cuda);
    Tensor stok = Tensor::empty({A}, DType::i32, Device::cuda);
    const std::size_t sb = detail::gpu::metadata_scratch_bytes(A, E);
    Tensor scratch = Tensor::empty({static_cast<std::int64_t>(sb)}, DType::i32, Device::cuda);  // 4x enough
    detail::gpu::Metadata m;
    m.counts = counts.data<std::int32_t>();
    m.offsets = offsets.data<std::int64_t>();
    m.tile_offsets = tiles.data<std::int32_t>();
    m.sorted = sorted.data<std::int32_t>();
    m.slot = slot.data<std::int32_t>();
    m.sorted_token = stok.data<std::int32_t>();
    detail::gpu::build_metadata(ids.data<std::int32_t>(), nullptr, K, A, E, tile, m, scratch.raw(), sb);
    const auto gc = host<std::int32_t>(counts);
    const auto go = host<std::int64_t>(offsets);
    const auto gt = host<std::int32_t>(tiles);
    for (int e = 0; e < E; ++e) ASSERT_EQ(gc[e], cm.counts[e]) << "expert " << e;
    for (int e = 0; e <= E; ++e) ASSERT_EQ(go[e], cm.offsets[e]) << "offset " << e;
    std::int64_t tacc = 0;
    for (int e = 0; e < E; ++e) {
      ASSERT_EQ(gt[e], tacc);
      tacc += (cm.counts[e] + tile - 1) / tile;
    }
    ASSERT_EQ(gt[E], tacc);
    const auto gs = host<std::int32_t>(sorted), gsl = host<std::int32_t>(slot), gst = host<std::int32_t>(stok);
    for (std::int64_t p = 0; p < A; ++p) {
      ASSERT_EQ(gs[p], cm.sorted[p]) << "sorted " << p;
      ASSERT_EQ(gst[p], cm.sorted_token[p]) << "sorted_token " << p;
      ASSERT_EQ(gsl[p], cm.slot[p]) << "slot " << p;
    }
  }
}

namespace {

// build_metadata() of `expert` against a plain stable counting sort, where expert id E marks an
// unused slot (not counted, placed after offsets[E] in order) and empty token_of means a / K.
void check_metadata(const std::vector<std::int32_t>& expert, const std::vector<std::int32_t>& token_of, int K,
                    int E, int tile) {
  namespace g = detail::gpu;
  const std::int64_t A = static_cast<std::int64_t>(expert.size());
  std::vector<std::int64_t> offsets(E + 2, 0);  // [E + 1]: where the unused slots end (A)
  std::vector<std::int32_t> tiles(E + 1, 0);
  for (std::int32_t e : expert) ++offsets[e + 1];
  for (int e = 0; e < E; ++e) tiles[e + 1] = tiles[e] + static_cast<std::int32_t>((offsets[e + 1] + tile - 1) / tile);
  std::vector<std::int32_t> counts(offsets.begin() + 1, offsets.end() - 1);
  for (int e = 0; e <= E; ++e) offsets[e + 1] += offsets[e];
  std::vector<std::int32_t> sorted(A), slot(A), stok(A);
  std::vector<std::int64_t> next(offsets.begin(), offsets.end() - 1);
  for (std::int64_t a = 0; a < A; ++a) {
    const auto p = next[expert[a]]++;
    sorted[p] = static_cast<std::int32_t>(a);
    slot[a] = static_cast<std::int32_t>(p);
    stok[p] = token_of.empty() ? static_cast<std::int32_t>(a / K) : token_of[a];
  }
  auto dev = [](std::int64_t n, DType t) { return Tensor::empty({std::max<std::int64_t>(n, 1)}, t, Device::cuda); };
  Tensor ids = dev_i32(expert), tok = dev_i32(token_of);
  Tensor gc = dev(E, DType::i32), go = dev(E + 1, DType::i64), gt = dev(E + 1, DType::i32);
  Tensor gs = dev(A, DType::i32), gsl = dev(A, DType::i32), gst = dev(A, DType::i32);
  const std::size_t sb = g::metadata_scratch_bytes(A, E);
  Tensor scratch = dev(static_cast<std::int64_t>(sb), DType::i32);  // 4x enough
  g::Metadata m{gc.data<std::int32_t>(), go.data<std::int64_t>(), gt.data<std::int32_t>(),
                gs.data<std::int32_t>(), gsl.data<std::int32_t>(), gst.data<std::int32_t>()};
  g::build_metadata(ids.data<std::int32_t>(), token_of.empty() ? nullptr : tok.data<std::int32_t>(), K, A, E, tile,
                    m, scratch.raw(), sb);
  const auto hc = host<std::int32_t>(gc), ht = host<std::int32_t>(gt);
  const auto ho = host<std::int64_t>(go);
  for (int e = 0; e < E; ++e) ASSERT_EQ(hc[e], counts[e]) << "counts " << e;
  for (int e = 0; e <= E; ++e) {
    ASSERT_EQ(ho[e], offsets[e]) << "offsets " << e;
    ASSERT_EQ(ht[e], tiles[e]) << "tile_offsets " << e;
  }
  const auto hs = host<std::int32_t>(gs), hsl = host<std::int32_t>(gsl), hst = host<std::int32_t>(gst);
  for (std::int64_t p = 0; p < A; ++p) {
    ASSERT_EQ(hs[p], sorted[p]) << "sorted " << p;
    ASSERT_EQ(hsl[p], slot[p]) << "slot " << p;
    ASSERT_EQ(hst[p], stok[p]) << "sorted_token " << p;
  }
}

}  // namespace

// The one-block path of small A (decode) and the general path (chunks of the assignments, a
// block each) on either side of its limits (src/cuda/metadata.cu: A <= 16384, E <= 1024 where
// shared memory allows), on shapes the router's output does not give: empty experts, one expert,
// runs across chunks, unused slots; the general path also with many chunks, with few large ones
// (E 4096: as many as its scan's counters allow) and with none filled (A 0, E above 1024).
// The one-block path's 256-thread block (A <= 2048) and its 1024-thread block on both sides of
// that limit, and again for A <= 2048 with the 1024-thread block (TILEMOE_META_SMALL256=0).
TEST(GpuMetadata, SmallPathMatchesReference) {
  TILEMOE_REQUIRE_GPU();
  namespace g = detail::gpu;
  constexpr std::int64_t kSmall = 16384;  // metadata.cu's kSmallMaxAssignments
  // Which path runs: the one-block path needs no scratch.
  EXPECT_EQ(g::metadata_scratch_bytes(0, 8), 0u);
  EXPECT_EQ(g::metadata_scratch_bytes(kSmall, 256), 0u);
  EXPECT_GT(g::metadata_scratch_bytes(kSmall + 1, 256), 0u);
  EXPECT_GT(g::metadata_scratch_bytes(512, 1025), 0u);
  if (test::is_hopper()) EXPECT_EQ(g::metadata_scratch_bytes(kSmall, 1024), 0u);
  enum Fill { random, one_expert, even_only, runs, unused, all_unused };
  const char* names[] = {"random", "one_expert", "even_only", "runs", "unused", "all_unused"};
  struct C { std::int64_t A; int E, K; Fill fill; };
  for (const C& c : {C{0, 8, 1, random}, C{1, 1, 1, random}, C{512, 1, 1, random}, C{513, 1, 1, unused},
                     C{512, 64, 8, random}, C{512, 64, 8, one_expert}, C{1000, 256, 4, even_only},
                     C{3000, 5, 3, runs}, C{4096, 1024, 8, random}, C{4096, 1024, 8, unused}, C{300, 32, 3, all_unused},
                     C{kSmall, 1024, 16, unused}, C{kSmall, 7, 2, runs}, C{kSmall - 1, 128, 1, one_expert},
                     C{kSmall + 1, 1024, 16, unused}, C{kSmall + 1, 64, 1, runs}, C{2048, 1025, 8, unused},
                     C{2048, 4096, 2, random}, C{2048, 1024, 8, unused}, C{2048, 128, 8, runs},
                     C{2049, 64, 8, random}, C{1500, 1024, 1, even_only}, C{200003, 128, 8, unused},
                     C{300000, 4096, 2, random}, C{20000, 2000, 8, runs}, C{0, 2048, 1, random},
                     C{100000, 1, 1, one_expert}, C{4 * kSmall + 7, 256, 8, even_only}})
    for (const char* env : {static_cast<const char*>(nullptr), "0"})
    for (bool with_token_of : {false, true})
      for (int tile : {g::grouped_tile_m(), 3}) {
        if ((env && c.A > 2048) || (test::sanitizing() && c.A > 70000)) continue;
        const test::ScopedEnv block("TILEMOE_META_SMALL256", env);
        const std::uint64_t seed = fresh_seed();
        SCOPED_TRACE("A=" + std::to_string(c.A) + " E=" + std::to_string(c.E) + " K=" + std::to_string(c.K) + " " +
                     names[c.fill] + (with_token_of ? " token_of" : "") + " tile=" + std::to_string(tile) +
                     (env ? " 1024 threads" : "") + " seed=" + std::to_string(seed));
        std::mt19937_64 gen(seed);
        std::vector<std::int32_t> expert(c.A), token_of;
        for (std::int64_t a = 0; a < c.A; ++a) {
          const int r = static_cast<int>(gen() % c.E);
          switch (c.fill) {
            case random: expert[a] = r; break;
            case one_expert: expert[a] = c.E / 2; break;
            case even_only: expert[a] = r / 2 * 2; break;
            case runs: expert[a] = static_cast<int>(a / 37 % c.E); break;  // runs across 32-wide chunks
            case unused: expert[a] = gen() % 4 == 0 ? c.E : r; break;
            case all_unused: expert[a] = c.E; break;
          }
          if (with_token_of) token_of.push_back(static_cast<std::int32_t>(gen() % 100000));
        }
        check_metadata(expert, token_of, c.K, c.E, tile);
        if (HasFatalFailure()) return;
      }
}

TEST(GpuCombine, MatchesCpu) {
  TILEMOE_REQUIRE_GPU();
  for (auto [T, d, K] : {std::tuple<std::int64_t, std::int64_t, int>{1, 64, 1}, {100, 72, 3}, {257, 100, 8},
                         {64, 1536, 16}}) {
    const std::uint64_t seed = fresh_seed();
    SCOPED_TRACE("T=" + std::to_string(T) + " d=" + std::to_string(d) + " seed=" + std::to_string(seed));
    const int E = 20;
    RouterConfig rc;
    rc.num_experts = E;
    rc.top_k = K;
    const Routing r = route(rc, random_logits(T, E, false, seed).data(), T);
    const RoutingMetadata m = build_metadata(r);
    const std::int64_t A = r.num_assignments();
    const Tensor y = random_tokens(A, d, DType::bf16, seed + 3);
    const Tensor ref = combine(r, m, y.to(DType::f32));
    std::vector<std::int32_t> slot(m.slot.begin(), m.slot.end());
    Tensor yd = y.to(Device::cuda), sd = dev_i32(slot), wd = dev_f32(r.weight);
    // A shared expert's rows (added with weight 1) and the tokens' assignment ranges given as
    // offsets (as rounding makes them), in the second pass.
    const Tensor ysh = random_tokens(T, d, DType::bf16, seed + 5);
    const Tensor ysd = ysh.to(Device::cuda);
    Tensor toff = Tensor::empty({T + 1}, DType::i64);
    for (std::int64_t t = 0; t <= T; ++t) toff.data<std::int64_t>()[t] = t * K;
    const Tensor toffd = toff.to(Device::cuda);
    const auto c = ref.to_floats(), ys = ysh.to(DType::f32).to_floats();
    // Both kernels: a thread per (token, 8 columns) and a block per token (TILEMOE_COMBINE=token).
    for (const char* kernel : {"items", "token"})
      for (const bool shared : {false, true}) {
        SCOPED_TRACE(std::string(kernel) + (shared ? ", a shared expert, token offsets" : ""));
        const test::ScopedEnv env("TILEMOE_COMBINE", kernel);
        Tensor out = Tensor::empty({T, d}, DType::f32, Device::cuda);
        detail::gpu::combine(yd.raw(), true, shared ? ysd.raw() : nullptr, shared ? 1 : 0, wd.data<float>(),
                             sd.data<std::int32_t>(), shared ? toffd.data<std::int64_t>() : nullptr, K, T, d,
                             out.raw(), false);
        std::vector<double> want(c.begin(), c.end());
        if (shared)
          for (std::size_t i = 0; i < want.size(); ++i) want[i] += ys[i];
        EXPECT_LT(relative_error(out.to_floats(), want), 1e-6);
      }
  }
}

// The grouped GEMM pair against the CPU experts (bf16 storage, fp32 accumulation on both).
TEST(GpuGroupedGemm, MatchesCpuExperts) {
  TILEMOE_REQUIRE_GPU();
  constexpr double kBound = 5e-3;  // 3x the worst that H200 run 155 printed (0.00167)
  double worst = 0;
  for (auto [d, n, E, K, T] : {std::tuple<std::int64_t, std::int64_t, int, int, std::int64_t>{128, 64, 8, 2, 300},
                               {72, 40, 13, 3, 77}, {100, 36, 10, 2, 65}, {1536, 256, 16, 4, 700}}) {
    if (test::sanitizing() && d > 1000) continue;
    const std::uint64_t seed = fresh_seed();
    SCOPED_TRACE("d=" + std::to_string(d) + " n=" + std::to_string(n) + " seed=" + std::to_string(seed));
    MoeConfig c;
    c.d_model = d;
    c.d_expert = n;
    c.num_experts = E;
    c.top_k = K;
    const MoeWeights wh = random_weights(c, DType::bf16, seed);
    const Tensor xh = random_tokens(T, d, DType::bf16, seed + 1);
    const Routing r = route(c.router_config(), router_logits(wh, xh));
    const RoutingMetadata m = build_metadata(r);
    const Tensor yref = experts_forward(c, wh, xh, r, m, Algorithm::sequential);
    const std::int64_t A = r.num_assignments();
    const int tile = detail::gpu::grouped_tile_m();
    std::vector<std::int64_t> toff(E + 1, 0);
    std::vector<std::int32_t> tiles(E + 1, 0), stok(m.sorted_token.begin(), m.sorted_token.end());
    for (int e = 0; e < E; ++e) tiles[e + 1] = tiles[e] + static_cast<std::int32_t>((m.counts[e] + tile - 1) / tile);
    Tensor offh = Tensor::empty({E + 1}, DType::i64);
    std::copy(m.offsets.begin(), m.offsets.end(), offh.data<std::int64_t>());
    Tensor offd = offh.to(Device::cuda), tiled = dev_i32(tiles), stokd = dev_i32(stok);
    const MoeWeights wd = wh.to(Device::cuda);
    const Tensor xd = xh.to(Device::cuda);
    const std::int64_t lda = detail::gpu::act_row_stride(n);
    Tensor act = Tensor::empty({A, lda}, DType::bf16, Device::cuda);
    Tensor y = Tensor::empty({A, d}, DType::bf16, Device::cuda);
    auto u16 = [](const Tensor& t) { return static_cast<const std::uint16_t*>(t.raw()); };
    const std::int64_t max_tiles = tiles[E] + 3;
    for (const char* kernel : {"default", "mma", "wgmma", "wgmma-cp-async", "wgmma-rows-cp-async", "fused", "fused-wgmma-up", "fused-1-stage",
                               "fused-4-stage", "fused-static", "fused-dynamic", "fused-staged",
                               "fused-staged-1-stage", "wgmma-fixed-raster",
                               "fused-fixed-raster"}) {  // Hopper ones fall back elsewhere
    SCOPED_TRACE(kernel);
    const std::string k = kernel;
    detail::gpu::GroupedPath path;
    path.fused = k.rfind("fused", 0) == 0;
    path.stages = k == "fused-1-stage" || k == "fused-staged-1-stage" ? 1 : k == "fused-4-stage" ? 4 : 0;
    // fused-staged*: the routed x rows copied into y's room first (as the forward does), then the
    // up-projection reads them by TMA
    const bool staged = k.rfind("fused-staged", 0) == 0;
    if (path.fused) {
      path.x_stage = static_cast<std::uint16_t*>(y.raw());
      path.x_stage_rows = A;
    }
    // mma, wgmma: forced; wgmma-cp-async: the wgmma kernel with its weights copied by cp.async, not
    // TMA; wgmma-rows-cp-async: its down-projection's rows of A by cp.async, not TMA (weights by TMA); fused-wgmma-up: the wgmma up-projection whatever the heuristic picks; the others under
    // whatever the run was given.
    const char* forced = k == "mma" || k == "wgmma" ? kernel
                         : k == "fused-wgmma-up" || k == "wgmma-cp-async" || k == "wgmma-rows-cp-async" ||
                                   k == "wgmma-fixed-raster"
                             ? "wgmma"
                             : nullptr;
    std::optional<test::ScopedEnv> env, sched, tma_b, tma_a, gather, raster;
    // *-fixed-raster: the sm90 kernels' tiles in groups of fixed rows across experts (the default
    // rasters within each expert)
    if (k.find("fixed-raster") != std::string::npos) raster.emplace("TILEMOE_RASTER", "fixed");
    if (k == "wgmma-cp-async") tma_b.emplace("TILEMOE_WGMMA_TMA_B", "0");  // weights by cp.async too
    tma_a.emplace("TILEMOE_WGMMA_TMA_A", k == "wgmma-rows-cp-async" ? "0" : nullptr);  // else the default
    gather.emplace("TILEMOE_UP_GATHER", staged ? "staged" : "kernel");
    if (forced) env.emplace("TILEMOE_GROUPED_KERNEL", forced);
    // fused-static, fused-dynamic: the warp-specialized kernels' tile hand-out either way, both
    // projections on them
    if (k == "fused-static" || k == "fused-dynamic") {
      env.emplace("TILEMOE_GROUPED_KERNEL", "ws");
      sched.emplace("TILEMOE_WS_SCHED", k == "fused-static" ? "static" : "dynamic");
    }
    ASSERT_EQ(cudaMemset(act.raw(), 0xff, act.nbytes()), cudaSuccess);  // NaNs: every output must be written
    ASSERT_EQ(cudaMemset(y.raw(), 0xff, y.nbytes()), cudaSuccess);
    const std::string up_why = detail::gpu::grouped_up(u16(xd), d, u16(wd.w13), n, true, Activation::swiglu, E, offd.data<std::int64_t>(),
                            tiled.data<std::int32_t>(), max_tiles, stokd.data<std::int32_t>(),
                            static_cast<std::uint16_t*>(act.raw()), lda, path);
    const std::string down_why = detail::gpu::grouped_down(
        u16(act), lda, n, u16(wd.w2), d, E, offd.data<std::int64_t>(), tiled.data<std::int32_t>(), max_tiles, A,
        static_cast<std::uint16_t*>(y.raw()), path);
    env.reset();
    sched.reset();
    tma_b.reset();
    tma_a.reset();
    gather.reset();
    raster.reset();
    if (path.fused && test::is_hopper() && d % 8 == 0 && n % 8 == 0) {
      EXPECT_EQ(up_why, "");
      EXPECT_EQ(down_why, "");
    } else if (path.fused) {
      EXPECT_NE(up_why, "");  // ran on the portable kernels, and said why
    }
    const auto g = y.to_floats(), cref = yref.to_floats();
    const double err = relative_error(g, std::vector<double>(cref.begin(), cref.end()));
    EXPECT_LT(err, kBound);
    worst = std::max(worst, err);
    }
  }
  // The bound's margin, read from the log (the CPU experts round where the GPU does).
  std::printf("grouped experts: largest relative error %.3g (bound %.0e)\n", worst, kBound);
}
#endif  // TILEMOE_WITH_CUDA

TEST(GpuStages, SkipsWithoutGpu) {
  TILEMOE_REQUIRE_GPU();
  SUCCEED();
}

// The tests' environment switches restore what the run was given (set or not); no GPU needed.
TEST(GpuTestUtil, ScopedEnvRestoresTheOuterSetting) {
  const char* name = "TILEMOE_TEST_SCOPED_ENV";
  unsetenv(name);
  {
    const test::ScopedEnv a(name, "outer");
    EXPECT_STREQ(std::getenv(name), "outer");
    {
      const test::ScopedEnv b(name, "inner");
      EXPECT_STREQ(std::getenv(name), "inner");
      {
        const test::ScopedEnv c(name, nullptr);
        EXPECT_EQ(std::getenv(name), nullptr);
      }
      EXPECT_STREQ(std::getenv(name), "inner");
    }
    EXPECT_STREQ(std::getenv(name), "outer");
  }
  EXPECT_EQ(std::getenv(name), nullptr);
}

#if TILEMOE_WITH_CUDA
// Which launches run in clusters (heuristics.hpp; host code, no GPU needed): the gathering
// up-projection above decode sizes in clusters of two, everything else alone; the A/B switches
// force 1, 2 or 4 and ignore other values.
TEST(GpuHeuristics, ClusterSize) {
  using detail::gpu::ws_cluster_size;
  const test::ScopedEnv up_env("TILEMOE_WS_CLUSTER_UP", nullptr);
  const test::ScopedEnv down_env("TILEMOE_WS_CLUSTER_DOWN", nullptr);
  const int E = 128;
  EXPECT_EQ(ws_cluster_size(2 * E + 1, E, true, false), 2);  // gathering up-projection
  EXPECT_EQ(ws_cluster_size(2 * E, E, true, false), 1);      // decode sizes
  EXPECT_EQ(ws_cluster_size(4096, E, true, true), 1);        // rows by TMA (staged, dense pass)
  EXPECT_EQ(ws_cluster_size(4096, E, false, true), 1);       // down-projection
  {
    const test::ScopedEnv up4("TILEMOE_WS_CLUSTER_UP", "4");
    const test::ScopedEnv down2("TILEMOE_WS_CLUSTER_DOWN", "2");
    EXPECT_EQ(ws_cluster_size(4096, E, true, true), 4);
    EXPECT_EQ(ws_cluster_size(4096, E, false, true), 2);
    EXPECT_EQ(ws_cluster_size(2 * E, E, false, true), 1);  // never at decode sizes
  }
  for (const char* v : {"1", "3", "8", "x"}) {
    const test::ScopedEnv up("TILEMOE_WS_CLUSTER_UP", v);
    EXPECT_EQ(ws_cluster_size(4096, E, true, false), std::string(v) == "1" ? 1 : 2) << v;
  }
}

// The down-projection's tile (host code, no GPU needed): ping-pong unless the A/B switch says 0.
TEST(GpuHeuristics, PingPongDownProjection) {
  using detail::gpu::ws_pingpong;
  {
    const test::ScopedEnv unset("TILEMOE_WS_PINGPONG", nullptr);
    EXPECT_TRUE(ws_pingpong());
  }
  for (const char* v : {"0", "1", "all"}) {
    const test::ScopedEnv env("TILEMOE_WS_PINGPONG", v);
    EXPECT_EQ(ws_pingpong(), std::string(v) != "0") << v;
  }
}

// The persistent fused kernels walk many tiles per block on large inputs (the matrices above fit
// in one wave): each projection with each pipeline depth against the portable kernels on the
// same inputs, row by row, naming the first rows that differ.
TEST(GpuGroupedGemm, FusedKernelsManyTilesPerBlock) {
  TILEMOE_REQUIRE_GPU();
  if (!test::is_hopper()) GTEST_SKIP() << "the fused kernels need an sm_90 GPU";
  if (test::sanitizing()) GTEST_SKIP() << "large case";
  const std::int64_t d = 256, n = 128, T = 32768;
  const int E = 64, K = 8;
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  MoeConfig c;
  c.d_model = d;
  c.d_expert = n;
  c.num_experts = E;
  c.top_k = K;
  const MoeWeights wh = random_weights(c, DType::bf16, seed);
  const Tensor xh = random_tokens(T, d, DType::bf16, seed + 1);
  const Routing r = route(c.router_config(), router_logits(wh, xh));
  const RoutingMetadata m = build_metadata(r);
  const std::int64_t A = r.num_assignments();
  const int tile = detail::gpu::grouped_tile_m();
  std::vector<std::int32_t> tiles(E + 1, 0), stok(m.sorted_token.begin(), m.sorted_token.end());
  for (int e = 0; e < E; ++e) tiles[e + 1] = tiles[e] + static_cast<std::int32_t>((m.counts[e] + tile - 1) / tile);
  Tensor offh = Tensor::empty({E + 1}, DType::i64);
  std::copy(m.offsets.begin(), m.offsets.end(), offh.data<std::int64_t>());
  Tensor offd = offh.to(Device::cuda), tiled = dev_i32(tiles), stokd = dev_i32(stok);
  const MoeWeights wd = wh.to(Device::cuda);
  const Tensor xd = xh.to(Device::cuda);
  const std::int64_t lda = detail::gpu::act_row_stride(n), max_tiles = tiles[E] + 3;
  auto u16 = [](const Tensor& t) { return static_cast<const std::uint16_t*>(t.raw()); };
  auto m16 = [](Tensor& t) { return static_cast<std::uint16_t*>(t.raw()); };
  auto up = [&](Tensor& act, detail::gpu::GroupedPath p, Tensor* stage = nullptr) {
    if (stage) {
      p.x_stage = static_cast<std::uint16_t*>(stage->raw());
      p.x_stage_rows = A;
    }
    return detail::gpu::grouped_up(u16(xd), d, u16(wd.w13), n, true, Activation::swiglu, E, offd.data<std::int64_t>(),
                                   tiled.data<std::int32_t>(), max_tiles, stokd.data<std::int32_t>(), m16(act), lda, p);
  };
  auto down = [&](const Tensor& act, Tensor& y, detail::gpu::GroupedPath p) {
    return detail::gpu::grouped_down(u16(act), lda, n, u16(wd.w2), d, E, offd.data<std::int64_t>(),
                                     tiled.data<std::int32_t>(), max_tiles, A, m16(y), p);
  };
  // Rows whose relative error passes 1e-2, with their expert and row tile.
  auto compare = [&](const Tensor& got, const Tensor& want, std::int64_t cols, std::int64_t ld, const char* what) {
    const auto g = got.to_floats(), w = want.to_floats();
    std::int64_t bad = 0;
    std::string first;
    for (std::int64_t p = 0; p < A; ++p) {
      double num = 0, den = 0;
      for (std::int64_t j = 0; j < cols; ++j) {
        const double a = g[p * ld + j], b = w[p * ld + j];
        num += (a - b) * (a - b);
        den += b * b;
      }
      if (!(num <= 1e-4 * den + 1e-12)) {
        if (bad++ < 5) {
          const int e = static_cast<int>(std::upper_bound(m.offsets.begin(), m.offsets.end(), p) - m.offsets.begin()) - 1;
          first += " p=" + std::to_string(p) + "(e" + std::to_string(e) + " tile " +
                   std::to_string((p - m.offsets[e]) / tile) + " row " + std::to_string((p - m.offsets[e]) % tile) + ")";
        }
      }
    }
    EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << A << " rows differ;" << first;
  };
  Tensor act_ref = Tensor::empty({A, lda}, DType::bf16, Device::cuda), y_ref = Tensor::empty({A, d}, DType::bf16, Device::cuda);
  {
    const test::ScopedEnv env("TILEMOE_GROUPED_KERNEL", "mma");
    up(act_ref, {});
    down(act_ref, y_ref, {});
  }
  // Each pipeline depth with the tiles handed out statically, then dynamically (a device counter
  // that each launch leaves at zero for the next: up and down run back to back), the x rows
  // gathered in the kernel or staged in y's room (the forward's two ways).
  for (const std::string gather : {"kernel", "staged"})
  for (const std::string sched : {"static", "dynamic"})
  for (int stages : {0, 1, 2, 3, 4}) {
    SCOPED_TRACE("x rows " + gather + ", schedule " + sched + " stages=" + std::to_string(stages));
    const test::ScopedEnv sched_env("TILEMOE_WS_SCHED", sched == "static" ? "static" : "dynamic");
    const test::ScopedEnv gather_env("TILEMOE_UP_GATHER", gather.c_str());
    Tensor act = Tensor::empty({A, lda}, DType::bf16, Device::cuda), y = Tensor::empty({A, d}, DType::bf16, Device::cuda);
    ASSERT_EQ(cudaMemset(act.raw(), 0xff, act.nbytes()), cudaSuccess);
    ASSERT_EQ(cudaMemset(y.raw(), 0xff, y.nbytes()), cudaSuccess);
    const std::string why_up = up(act, {true, stages}, &y);
    const std::string why_down = down(act, y, {true, stages});  // chained, as in the forward
    if (!test::is_hopper()) continue;
    EXPECT_EQ(why_up, "");
    EXPECT_EQ(why_down, "");
    compare(act, act_ref, n, lda, "up-projection");
    compare(y, y_ref, d, d, "down-projection");
  }
  // Clusters of 1, 2 and 4 blocks for both projections (heuristics.hpp ws_cluster_size: two for
  // the gathering up-projection by default), the unit's weight tile multicast or loaded whole by
  // every block (TILEMOE_WS_CLUSTER_MCAST=0), the x rows gathered or staged; a cluster of two at
  // each pipeline depth; the up-projection's fallback where no cluster fits (run alone); units
  // of consecutive row tiles (spanning experts) instead of units from each expert's first row,
  // the units' columns without the serpentine order; the gathering producer's weight loads from
  // thread 0 only (TILEMOE_WS_TMA_ROTATE=0, the default rotating its warp), alone and in clusters
  // of two.
  struct ClusterCase {
    const char* size;
    const char* mcast;
    const char* gather;
    int stages;
    const char* down_size = nullptr;  // the up-projection's size unless set
    const char* nofit = nullptr;
    const char* units = nullptr;       // TILEMOE_WS_CLUSTER_UNITS (fixed: consecutive row tiles)
    const char* serpentine = nullptr;  // TILEMOE_WS_SERPENTINE
    const char* rotate = nullptr;      // TILEMOE_WS_TMA_ROTATE
  };
  std::vector<ClusterCase> cluster_cases;
  for (const char* size : {"1", "2", "4"})
    for (const char* mcast : {"1", "0"})
      for (const char* gather : {"kernel", "staged"}) cluster_cases.push_back({size, mcast, gather, 0});
  for (int stages : {1, 2, 3}) cluster_cases.push_back({"2", "1", "kernel", stages});
  cluster_cases.push_back({"2", "1", "kernel", 0, "1", "1"});
  for (const char* size : {"2", "4"})
    for (const char* gather : {"kernel", "staged"}) cluster_cases.push_back({size, "1", gather, 0, nullptr, nullptr, "fixed"});
  cluster_cases.push_back({"2", "1", "kernel", 0, nullptr, nullptr, nullptr, "0"});
  for (const char* size : {"1", "2"}) cluster_cases.push_back({size, "1", "kernel", 0, nullptr, nullptr, nullptr, nullptr, "0"});
  for (const ClusterCase& cc : cluster_cases) {
    SCOPED_TRACE(std::string("clusters of ") + cc.size + ", multicast " + cc.mcast + ", x rows " + cc.gather +
                 ", stages=" + std::to_string(cc.stages) + (cc.nofit ? ", none fitting" : "") +
                 (cc.units ? ", units of consecutive row tiles" : "") + (cc.serpentine ? ", no serpentine" : "") +
                 (cc.rotate ? ", weight loads from thread 0" : ""));
    // The cooperative down-projection (ping-pong, the default, takes no clusters; its cases
    // follow).
    const test::ScopedEnv coop_env("TILEMOE_WS_PINGPONG", "0");
    const test::ScopedEnv up_env("TILEMOE_WS_CLUSTER_UP", cc.size);
    const test::ScopedEnv down_env("TILEMOE_WS_CLUSTER_DOWN", cc.down_size ? cc.down_size : cc.size);
    const test::ScopedEnv nofit_env("TILEMOE_WS_CLUSTER_NOFIT", cc.nofit);
    const test::ScopedEnv units_env("TILEMOE_WS_CLUSTER_UNITS", cc.units);
    const test::ScopedEnv serpentine_env("TILEMOE_WS_SERPENTINE", cc.serpentine);
    const test::ScopedEnv rotate_env("TILEMOE_WS_TMA_ROTATE", cc.rotate);
    const test::ScopedEnv mcast_env("TILEMOE_WS_CLUSTER_MCAST", cc.mcast);
    const test::ScopedEnv gather_env("TILEMOE_UP_GATHER", cc.gather);
    Tensor act = Tensor::empty({A, lda}, DType::bf16, Device::cuda), y = Tensor::empty({A, d}, DType::bf16, Device::cuda);
    ASSERT_EQ(cudaMemset(act.raw(), 0xff, act.nbytes()), cudaSuccess);
    ASSERT_EQ(cudaMemset(y.raw(), 0xff, y.nbytes()), cudaSuccess);
    up(act, {true, cc.stages}, &y);
    down(act, y, {true, cc.stages});
    if (test::is_hopper()) {
      compare(act, act_ref, n, lda, "up-projection");
      compare(y, y_ref, d, d, "down-projection");
    }
  }
  // The down-projection in ping-pong (each consumer warpgroup its own 128 x 192 tiles; d 256: a
  // whole column tile and one of 64 columns), at each pipeline depth, statically and dynamically
  // scheduled, on the reference activations.
  for (const char* sched : {"static", "dynamic"})
    for (int stages : {0, 1, 2, 4}) {
      SCOPED_TRACE(std::string("ping-pong down-projection, schedule ") + sched + ", stages=" + std::to_string(stages));
      const test::ScopedEnv pp_env("TILEMOE_WS_PINGPONG", "1");
      const test::ScopedEnv sched_env("TILEMOE_WS_SCHED", sched);
      Tensor y = Tensor::empty({A, d}, DType::bf16, Device::cuda);
      ASSERT_EQ(cudaMemset(y.raw(), 0xff, y.nbytes()), cudaSuccess);
      const std::string why = down(act_ref, y, {true, stages});
      if (!test::is_hopper()) continue;
      EXPECT_EQ(why, "");
      compare(y, y_ref, d, d, "down-projection");
    }
  // The tiles in groups of fixed rows across experts (TILEMOE_RASTER=fixed; the default rasters
  // within each expert), both kernels of the up-projection.
  for (const char* up_kernel : {"ws", "wgmma"}) {
    SCOPED_TRACE(std::string("fixed raster, up-projection on ") + up_kernel);
    const test::ScopedEnv raster_env("TILEMOE_RASTER", "fixed");
    const test::ScopedEnv kernel_env("TILEMOE_GROUPED_KERNEL", up_kernel);
    const test::ScopedEnv gather_env("TILEMOE_UP_GATHER", "kernel");
    Tensor act = Tensor::empty({A, lda}, DType::bf16, Device::cuda), y = Tensor::empty({A, d}, DType::bf16, Device::cuda);
    ASSERT_EQ(cudaMemset(act.raw(), 0xff, act.nbytes()), cudaSuccess);
    ASSERT_EQ(cudaMemset(y.raw(), 0xff, y.nbytes()), cudaSuccess);
    up(act, {true, 0});
    down(act, y, {true, 0});
    if (test::is_hopper()) {
      compare(act, act_ref, n, lda, "up-projection");
      compare(y, y_ref, d, d, "down-projection");
    }
  }
  // The same with the metadata built on the device, as the forward does.
  {
    namespace g = detail::gpu;
    auto dev = [](std::int64_t count, DType t) { return Tensor::empty({std::max<std::int64_t>(count, 1)}, t, Device::cuda); };
    Tensor ids = dev_i32(r.expert), counts = dev(E, DType::i32), offs = dev(E + 1, DType::i64), tl = dev(E + 1, DType::i32);
    Tensor sorted = dev(A, DType::i32), slot = dev(A, DType::i32), st = dev(A, DType::i32);
    const std::size_t sb = g::metadata_scratch_bytes(A, E);
    Tensor scratch = dev(static_cast<std::int64_t>(sb), DType::i32);
    g::Metadata md{counts.data<std::int32_t>(), offs.data<std::int64_t>(), tl.data<std::int32_t>(),
                   sorted.data<std::int32_t>(), slot.data<std::int32_t>(), st.data<std::int32_t>()};
    g::build_metadata(ids.data<std::int32_t>(), nullptr, K, A, E, tile, md, scratch.raw(), sb);
    const std::int64_t fmax = (A + std::int64_t(E) * (tile - 1)) / tile + 1;  // the forward's bound
    Tensor act = Tensor::empty({A, lda}, DType::bf16, Device::cuda), y = Tensor::empty({A, d}, DType::bf16, Device::cuda);
    ASSERT_EQ(cudaMemset(act.raw(), 0xff, act.nbytes()), cudaSuccess);
    ASSERT_EQ(cudaMemset(y.raw(), 0xff, y.nbytes()), cudaSuccess);
    g::grouped_up(u16(xd), d, u16(wd.w13), n, true, Activation::swiglu, E, md.offsets, md.tile_offsets, fmax,
                  md.sorted_token, m16(act), lda, {true, 0});
    g::grouped_down(u16(act), lda, n, u16(wd.w2), d, E, md.offsets, md.tile_offsets, fmax, A, m16(y), {true, 0});
    if (test::is_hopper()) {
      compare(act, act_ref, n, lda, "device metadata: up-projection");
      compare(y, y_ref, d, d, "device metadata: down-projection");
    }
  }
}

// The whole forward, grouped against fused on the same inputs, row by row, and fused twice.
TEST(GpuForward, FusedMatchesGroupedOnLargeInputs) {
  TILEMOE_REQUIRE_GPU();
  if (test::sanitizing()) GTEST_SKIP() << "large case";
  MoeConfig c;
  c.d_model = 256;
  c.d_expert = 128;
  c.num_experts = 64;
  c.top_k = 8;
  const std::uint64_t seed = fresh_seed();
  const MoeWeights w = random_weights(c, DType::bf16, seed).to(Device::cuda);
  for (std::int64_t T : {4096, 32768}) {
    SCOPED_TRACE("T=" + std::to_string(T) + " seed=" + std::to_string(seed));
    const Tensor x = random_tokens(T, c.d_model, DType::bf16, seed + T).to(Device::cuda);
    ForwardOptions og, of;
    of.algorithm = Algorithm::fused;
    // (each from fresh workspaces and a poisoned output: a tile a kernel skipped would show)
    const auto a = test::fresh_forward(c, w, x, og).to_floats();
    const auto b = test::fresh_forward(c, w, x, of).to_floats();
    const auto b2 = test::fresh_forward(c, w, x, of).to_floats();
    std::int64_t bad = 0, diff2 = 0;
    std::string first;
    for (std::int64_t t = 0; t < T; ++t) {
      double num = 0, den = 0, n2 = 0;
      for (std::int64_t j = 0; j < c.d_model; ++j) {
        const double u = a[t * c.d_model + j], v = b[t * c.d_model + j];
        num += (u - v) * (u - v);
        den += u * u;
        n2 += (v - b2[t * c.d_model + j]) * (v - b2[t * c.d_model + j]);
      }
      if (!(num <= 1e-4 * den + 1e-12) && bad++ < 8) first += " t=" + std::to_string(t);
      if (n2 != 0) ++diff2;
    }
    EXPECT_EQ(bad, 0) << bad << " of " << T << " tokens differ:" << first;
    EXPECT_EQ(diff2, 0) << "two fused runs differ on " << diff2 << " tokens";
  }
}
#endif  // TILEMOE_WITH_CUDA
