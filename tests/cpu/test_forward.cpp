// The CPU forward (sequential and grouped, fp32 and bf16) against the float64 reference, over
// edge shapes; and bad input.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <string>
#include <vector>

#include "expect_invalid.hpp"
#include "tilemoe/tilemoe.hpp"

using namespace tilemoe;

namespace {
MoeConfig layer(std::int64_t d, std::int64_t n, int E, int K, Activation act = Activation::swiglu) {
  MoeConfig c;
  c.name = "test";
  c.d_model = d;
  c.d_expert = n;
  c.num_experts = E;
  c.top_k = K;
  c.activation = act;
  return c;
}

// Bound fitting the storage precision: fp32 accumulation differences, or bf16 rounding of the
// activation and the output (2^-9 relative each).
double bound(DType t) { return t == DType::f32 ? 1e-5 : 1e-2; }

void expect_matches_reference(const MoeConfig& c, std::int64_t T, DType dtype, std::uint64_t seed,
                              Algorithm alg = Algorithm::grouped, int threads = 0) {
  MoeWeights w = random_weights(c, dtype, seed);
  Tensor x = random_tokens(T, c.d_model, dtype, seed + 1);
  ForwardTrace tr;
  ForwardOptions opt;
  opt.algorithm = alg;
  opt.num_threads = threads;
  Tensor out = moe_forward(c, w, x, opt, &tr);
  ASSERT_EQ(out.shape(), (Shape{T, c.d_model}));
  ASSERT_EQ(out.dtype(), dtype);
  const double err = relative_error(out.to_floats(), reference_forward(c, w, x, tr.routing));
  EXPECT_LT(err, bound(dtype)) << c.name << " T=" << T << " d=" << c.d_model << " n=" << c.d_expert
                               << " E=" << c.num_experts << " K=" << c.top_k << " "
                               << to_string(dtype) << " " << to_string(alg);
}
}  // namespace

TEST(Forward, ShapeMatrix) {
  std::uint64_t seed = 100;
  for (Algorithm alg : {Algorithm::sequential, Algorithm::grouped})
    for (DType dt : {DType::f32, DType::bf16}) {
      expect_matches_reference(layer(64, 32, 8, 2), 1, dt, ++seed, alg);       // T = 1
      expect_matches_reference(layer(72, 40, 13, 3), 50, dt, ++seed, alg);     // E % 8 != 0, d % 64 != 0
      expect_matches_reference(layer(33, 17, 5, 5), 9, dt, ++seed, alg);       // K = E
      expect_matches_reference(layer(48, 24, 64, 1), 3, dt, ++seed, alg);      // most experts empty
      expect_matches_reference(layer(32, 16, 24, 16), 40, dt, ++seed, alg);    // K = 16
      expect_matches_reference(layer(130, 70, 16, 4), 700, dt, ++seed, alg, 3);  // several tiles
      expect_matches_reference(layer(40, 24, 2, 1), 1100, dt, ++seed, alg, 2);   // experts split
    }
}

TEST(Forward, EveryTopK) {
  for (int K = 1; K <= 16; ++K) expect_matches_reference(layer(40, 24, 16, K), 21, DType::f32, 300 + K);
}

TEST(Forward, ActivationsAndPresets) {
  for (Activation a : {Activation::swiglu, Activation::geglu, Activation::gelu, Activation::relu,
                       Activation::clamped_swiglu})
    expect_matches_reference(layer(48, 32, 8, 2, a), 30, DType::f32, 400 + static_cast<int>(a));
  expect_matches_reference(preset("tiny"), 64, DType::bf16, 501);
  expect_matches_reference(preset("tiny-deepseek"), 64, DType::f32, 502);  // shared expert, bias
  expect_matches_reference(preset("tiny-deepseek"), 64, DType::bf16, 503);
}

TEST(Forward, OneExpertTakesEveryToken) {
  MoeConfig c = layer(64, 32, 8, 1);
  MoeWeights w = random_weights(c, DType::f32, 7);
  // A router that always prefers expert 5: zero weights except a large bias on row 5 through x.
  float* r = w.router.data<float>();
  for (std::int64_t i = 0; i < w.router.numel(); ++i) r[i] = 0.0f;
  for (std::int64_t j = 0; j < c.d_model; ++j) r[5 * c.d_model + j] = 1.0f;
  Tensor x = random_tokens(200, c.d_model, DType::f32, 8);
  float* xp = x.data<float>();
  for (std::int64_t t = 0; t < 200; ++t) xp[t * c.d_model] = 1000.0f;  // sum of x row >> 0
  ForwardTrace tr;
  Tensor out = moe_forward(c, w, x, {}, &tr);
  EXPECT_EQ(tr.counts[5], 200);
  EXPECT_LT(relative_error(out.to_floats(), reference_forward(c, w, x, tr.routing)), 1e-5);
}

// A bf16 router (as checkpoints store it): the logits and the forward are those of an fp32 router
// holding the same values, bit for bit; other dtypes are refused by name.
TEST(Forward, Bf16RouterWeights) {
  const MoeConfig& c = preset("small");
  MoeWeights wb = random_weights(c, DType::f32, 31);
  wb.router = wb.router.to(DType::bf16);
  MoeWeights wf = wb;
  wf.router = wb.router.to(DType::f32);
  EXPECT_NE(wf.router.to_floats(), random_weights(c, DType::f32, 31).router.to_floats());  // rounded
  const Tensor x = random_tokens(97, c.d_model, DType::f32, 32);
  EXPECT_EQ(router_logits(wb, x).to_floats(), router_logits(wf, x).to_floats());
  ForwardTrace tb, tf;
  EXPECT_EQ(moe_forward(c, wb, x, {}, &tb).to_floats(), moe_forward(c, wf, x, {}, &tf).to_floats());
  EXPECT_EQ(tb.routing.expert, tf.routing.expert);
  MoeWeights bad = wb;
  bad.router = Tensor::zeros({c.num_experts, c.d_model}, DType::i32);
  expect_invalid([&] { moe_forward(c, bad, x); }, "router");
}

TEST(Forward, SequentialAndGroupedAgree) {
  const MoeConfig& c = preset("small");
  MoeWeights w = random_weights(c, DType::f32, 9);
  Tensor x = random_tokens(333, c.d_model, DType::f32, 10);
  ForwardOptions a, b;
  a.algorithm = Algorithm::sequential;
  b.algorithm = Algorithm::grouped;
  std::vector<float> oa = moe_forward(c, w, x, a).to_floats(), ob = moe_forward(c, w, x, b).to_floats();
  std::vector<double> od(ob.begin(), ob.end());
  EXPECT_LT(relative_error(oa, od), 1e-6);
}

TEST(Forward, RejectsBadInput) {
  const MoeConfig& c = preset("tiny");
  MoeWeights w = random_weights(c, DType::f32, 1);
  expect_invalid([&] { moe_forward(c, w, random_tokens(4, c.d_model + 1, DType::f32, 2)); }, "x.shape");
  expect_invalid([&] { moe_forward(c, w, Tensor::zeros({0, c.d_model}, DType::f32)); }, "tokens");
  expect_invalid([&] { moe_forward(c, w, random_tokens(4, c.d_model, DType::bf16, 2)); }, "x.dtype");
  Tensor x = random_tokens(4, c.d_model, DType::f32, 2);
  x.data<float>()[5] = NAN;
  expect_invalid([&] { moe_forward(c, w, x); }, "x[5]");
  x.data<float>()[5] = INFINITY;
  expect_invalid([&] { moe_forward(c, w, x); }, "x[5]");
  MoeConfig k_too_big = c;
  k_too_big.top_k = 9;
  expect_invalid([&] { moe_forward(k_too_big, w, random_tokens(4, c.d_model, DType::f32, 2)); }, "top_k = 9");
  MoeConfig zero = c;
  zero.d_expert = 0;
  expect_invalid([&] { random_weights(zero, DType::f32, 1); }, "d_expert = 0");
  MoeConfig no_experts = c;
  no_experts.num_experts = 0;
  expect_invalid([&] { no_experts.validate(); }, "num_experts = 0");
  MoeWeights bad = w;
  bad.w2 = Tensor::zeros({8, 64, 31}, DType::f32);
  expect_invalid([&] { moe_forward(c, bad, random_tokens(4, c.d_model, DType::f32, 2)); }, "w2.shape");
  expect_invalid([&] { preset("deepseek-v4"); }, "deepseek-v4");
  expect_invalid([&] { parse_algorithm("fast"); }, "fast");
  ForwardOptions fused;
  fused.algorithm = Algorithm::fused;
  expect_invalid([&] { moe_forward(c, w, random_tokens(4, c.d_model, DType::f32, 2), fused); }, "fused");
}

TEST(Config, PresetsAreValidAndMatchPublishedFigures) {
  for (const auto& c : presets()) EXPECT_NO_THROW(c.validate()) << c.name;
  const MoeConfig& ds = preset("deepseek-v3");
  EXPECT_EQ(ds.d_model, 7168);
  EXPECT_EQ(ds.d_expert, 2048);
  EXPECT_EQ(ds.num_experts, 256);
  EXPECT_EQ(ds.top_k, 8);
  EXPECT_EQ(ds.num_shared, 1);
  EXPECT_EQ(ds.n_groups, 8);
  EXPECT_EQ(ds.topk_groups, 4);
  EXPECT_FLOAT_EQ(ds.routed_scale, 2.5f);
  EXPECT_EQ(ds.router, RouterKind::sigmoid_group_topk);
  EXPECT_EQ(preset("gpt-oss-120b").activation, Activation::clamped_swiglu);
  EXPECT_EQ(preset("mixtral-8x7b").router, RouterKind::topk_softmax);
  EXPECT_FALSE(preset("olmoe-1b-7b").renormalize);
  // SwiGLU expert: 3 matrices of d x n, 2 FLOPs per multiply-add, K + shared experts per token.
  EXPECT_DOUBLE_EQ(ds.flops_per_token(), 2.0 * 3 * 7168 * (8.0 * 2048 + 2048));
}

// Benchmarks name layers as presets with sizes changed; bad modifiers are named.
TEST(Config, PresetVariantChangesSizesAndNamesBadModifiers) {
  const MoeConfig v = preset_variant("sonic-7b:d4096:n512:E64:K4");
  EXPECT_EQ(v.name, "sonic-7b:d4096:n512:E64:K4");
  EXPECT_EQ(v.d_model, 4096);
  EXPECT_EQ(v.d_expert, 512);
  EXPECT_EQ(v.num_experts, 64);
  EXPECT_EQ(v.top_k, 4);
  EXPECT_EQ(v.router, preset("sonic-7b").router);
  EXPECT_EQ(preset_variant("qwen3-30b-a3b").d_model, 2048);
  expect_invalid([&] { preset_variant("sonic-7b:x12"); }, "'x12'");
  expect_invalid([&] { preset_variant("sonic-7b:E"); }, "'E'");
  expect_invalid([&] { preset_variant("sonic-7b:K12a"); }, "'K12a'");
  expect_invalid([&] { preset_variant("sonic-7b:"); }, "modifier");
  expect_invalid([&] { preset_variant("sonic-7b:K200"); }, "top_k");  // K > E, from validate()
  expect_invalid([&] { preset_variant("nope:E8"); }, "nope");
}

// A CPU tensor that cannot be allocated is named (shape, dtype, size), not a bare std::bad_alloc.
TEST(Tensor, NamesAnAllocationThatFails) {
  try {
    Tensor::empty({std::int64_t(1) << 24, std::int64_t(1) << 24, 64}, DType::f32);
    ADD_FAILURE() << "a 72 PB tensor was allocated";
  } catch (const tilemoe::Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("out of host memory"), std::string::npos) << m;
    EXPECT_NE(m.find("[16777216, 16777216, 64] fp32"), std::string::npos) << m;
  }
  expect_invalid([] { Tensor::empty({4, -1}, DType::f32); }, "non-negative extents");
  expect_invalid([] { Tensor::empty({std::int64_t(1) << 40, std::int64_t(1) << 40}, DType::f32); }, "fewer than 2^60");
}

// release_cached_memory() without a GPU: nothing to give back, no error, CPU tensors untouched
// (tests/gpu: what it gives back on a GPU).
TEST(Tensor, ReleaseCachedMemoryWithoutGpu) {
  if (cuda_available()) GTEST_SKIP() << "a GPU is present: tests/gpu ReleaseCachedMemoryGivesItBack";
  const Tensor t = random_tokens(4, 8, DType::f32, 5);
  const std::vector<float> before = t.to_floats();
  EXPECT_NO_THROW(release_cached_memory());
  EXPECT_EQ(t.to_floats(), before);
}

// Tensor::from_blob: the caller's memory, not a copy; released once, by the last copy; the same
// forward as over tilemoe's own tensors; bad pointers named.
TEST(Tensor, FromBlobWrapsTheCallersMemory) {
  std::vector<float> buf = {1, 2, 3, 4, 5, 6};
  int released = 0;
  {
    Tensor t = Tensor::from_blob(buf.data(), {2, 3}, DType::f32, Device::cpu, [&](void* p) {
      EXPECT_EQ(p, buf.data());
      ++released;
    });
    EXPECT_EQ(t.raw(), buf.data());
    EXPECT_EQ(t.shape(), (Shape{2, 3}));
    EXPECT_EQ(t.data<float>()[4], 5.0f);
    buf[4] = 50;
    EXPECT_EQ(t.to_floats()[4], 50.0f);
    t.data<float>()[0] = 10;
    EXPECT_EQ(buf[0], 10.0f);
    Tensor copy = t;
    t = Tensor();
    EXPECT_EQ(released, 0) << "released while a copy lives";
    EXPECT_EQ(copy.clone().raw() == buf.data(), false);
  }
  EXPECT_EQ(released, 1);
  { Tensor t = Tensor::from_blob(buf.data(), {6}, DType::f32); }  // no release: nothing called
  EXPECT_EQ(buf[1], 2.0f);
}

TEST(Tensor, FromBlobForwardMatchesOwnedTensors) {
  const MoeConfig& cfg = preset("tiny");
  for (DType dt : {DType::f32, DType::bf16}) {
    const MoeWeights w = random_weights(cfg, dt, 5);
    const Tensor x = random_tokens(37, cfg.d_model, dt, 6);
    auto view = [](const Tensor& t) {  // the same memory, as a caller's blob
      return Tensor::from_blob(const_cast<void*>(t.raw()), t.shape(), t.dtype(), Device::cpu);
    };
    MoeWeights wv = w;
    wv.router = view(w.router);
    wv.w13 = view(w.w13);
    wv.w2 = view(w.w2);
    const std::vector<float> a = moe_forward(cfg, w, x).to_floats(), b = moe_forward(cfg, wv, view(x)).to_floats();
    EXPECT_EQ(a, b) << to_string(dt);
  }
}

TEST(Tensor, FromBlobNamesBadPointers) {
  std::vector<float> buf(16);
  expect_invalid([] { Tensor::from_blob(nullptr, {4}, DType::f32); }, "from_blob: data = null");
  expect_invalid([&] { Tensor::from_blob(reinterpret_cast<char*>(buf.data()) + 2, {4}, DType::f32); },
                 "aligned to fp32's 4 bytes");
  expect_invalid([&] { Tensor::from_blob(buf.data(), {4, -1}, DType::f32); }, "non-negative extents");
  if (!cuda_available()) {  // host memory for a CUDA tensor: no backend here, or no device
    EXPECT_THROW(Tensor::from_blob(buf.data(), {4}, DType::f32, Device::cuda), Error);
  } else {
    expect_invalid([&] { Tensor::from_blob(buf.data(), {4}, DType::f32, Device::cuda); }, "this is host memory");
  }
}

// moe_forward_into: the output in the caller's buffer (returned, no new storage), the same bits
// as moe_forward's; a wrong or overlapping buffer named.
TEST(Forward, IntoTheCallersBuffer) {
  const MoeConfig& cfg = preset("tiny-deepseek");
  for (DType dt : {DType::f32, DType::bf16}) {
    const MoeWeights w = random_weights(cfg, dt, 8);
    const Tensor x = random_tokens(45, cfg.d_model, dt, 9);
    const std::vector<float> want = moe_forward(cfg, w, x).to_floats();
    Tensor out = Tensor::empty({45, cfg.d_model}, dt);
    const Tensor got = moe_forward_into(cfg, w, x, out);
    EXPECT_EQ(got.raw(), out.raw());
    EXPECT_EQ(out.to_floats(), want) << to_string(dt);
    std::vector<double> blob(static_cast<std::size_t>(45 * cfg.d_model));  // room for either dtype
    moe_forward_into(cfg, w, x, Tensor::from_blob(blob.data(), {45, cfg.d_model}, dt), {.algorithm = Algorithm::sequential});
    EXPECT_EQ(Tensor::from_blob(blob.data(), {45, cfg.d_model}, dt).to_floats(), want) << to_string(dt);
  }
  const MoeWeights w = random_weights(cfg, DType::f32, 8);
  Tensor x = random_tokens(45, cfg.d_model, DType::f32, 9);
  expect_invalid([&] { moe_forward_into(cfg, w, x, Tensor()); }, "out = undefined");
  expect_invalid([&] { moe_forward_into(cfg, w, x, Tensor::empty({44, cfg.d_model}, DType::f32)); }, "out");
  expect_invalid([&] { moe_forward_into(cfg, w, x, Tensor::empty({45, cfg.d_model}, DType::bf16)); }, "out");
  expect_invalid([&] { moe_forward_into(cfg, w, x, x); }, "memory apart from x's");
  int not_a_stream = 0;
  expect_invalid([&] { moe_forward(cfg, w, x, {.stream = &not_a_stream}); }, "null for CPU tensors");
  expect_invalid([&] {  // a view that starts inside x
    moe_forward_into(cfg, w, x, Tensor::from_blob(x.data<float>() + 8, {45, cfg.d_model}, DType::f32));
  }, "memory apart from x's");
}

// ForwardOptions::topk_ids / topk_weights: the caller's routing instead of the layer's router.
// Given the routing the router chose, the same output bit for bit, with or without router
// weights; bad ids and weights named by position.
TEST(Forward, GivenRouting) {
  const MoeConfig& cfg = preset("tiny-deepseek");
  const std::int64_t T = 40;
  const int K = cfg.top_k, E = cfg.num_experts;
  for (DType dt : {DType::f32, DType::bf16}) {
    const MoeWeights w = random_weights(cfg, dt, 12);
    const Tensor x = random_tokens(T, cfg.d_model, dt, 13);
    ForwardTrace tr;
    const std::vector<float> want = moe_forward(cfg, w, x, {}, &tr).to_floats();
    Tensor ids = Tensor::empty({T, K}, DType::i32), wts = Tensor::empty({T, K}, DType::f32);
    std::copy(tr.routing.expert.begin(), tr.routing.expert.end(), ids.data<std::int32_t>());
    std::copy(tr.routing.weight.begin(), tr.routing.weight.end(), wts.data<float>());
    for (bool with_router : {true, false}) {
      MoeWeights wg = w;
      if (!with_router) wg.router = wg.router_bias = Tensor();
      EXPECT_EQ(moe_forward(cfg, wg, x, {.topk_ids = ids, .topk_weights = wts}).to_floats(), want)
          << to_string(dt) << (with_router ? "" : ", no router weights");
    }
  }
  const MoeWeights w = random_weights(cfg, DType::f32, 12);
  const Tensor x = random_tokens(T, cfg.d_model, DType::f32, 13);
  Tensor ids = Tensor::zeros({T, K}, DType::i32), wts = Tensor::zeros({T, K}, DType::f32);
  for (std::int64_t i = 0; i < T * K; ++i) ids.data<std::int32_t>()[i] = static_cast<std::int32_t>(i % K);
  auto run = [&](const Tensor& i, const Tensor& v) { moe_forward(cfg, w, x, {.topk_ids = i, .topk_weights = v}); };
  run(ids, wts);  // valid
  expect_invalid([&] { run(ids, Tensor()); }, "topk_ids and topk_weights both");
  expect_invalid([&] { run(Tensor::zeros({T, K + 1}, DType::i32), wts); }, "topk_ids");
  expect_invalid([&] { run(ids, Tensor::zeros({T, K}, DType::bf16)); }, "topk_weights");
  expect_invalid([&] { run(wts, wts); }, "topk_ids");  // fp32 ids
  {
    Tensor bad = ids.clone();
    bad.data<std::int32_t>()[3 * K + 1] = E;
    expect_invalid([&] { run(bad, wts); }, "topk_ids[3, 1] = " + std::to_string(E) + ": expected an expert id in [0, " + std::to_string(E) + ")");
    bad.data<std::int32_t>()[3 * K + 1] = 0;  // expert 0 twice in token 3
    expect_invalid([&] { run(bad, wts); }, "K distinct experts per token (topk_ids[3, 0] is 0 too)");
  }
  {
    Tensor nan = wts.clone();
    nan.data<float>()[5 * K + 2] = std::nanf("");
    expect_invalid([&] { run(ids, nan); }, "topk_weights[5, 2]");
  }
  expect_invalid([&] { moe_forward(cfg, w, x, {.rounding = RoundingOptions{}, .topk_ids = ids, .topk_weights = wts}); },
                 "rounding");
}

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(bf16::from_float(1.0f).bits, 0x3f80);
  EXPECT_EQ(bf16::from_float(1.00390625f).bits, 0x3f80);  // halfway, to even (down)
  EXPECT_EQ(bf16::from_float(1.01171875f).bits, 0x3f82);  // halfway, to even (up)
  EXPECT_TRUE(std::isnan(bf16::from_float(NAN).to_float()));
  EXPECT_EQ(bf16::from_float(-2.5f).to_float(), -2.5f);
}

// Stage timing on the CPU names each stage once, in order, with non-negative times that add up
// to no more than the wall time of the call; a pipeline depth outside 0..4 is rejected by name.
TEST(Forward, TimesStagesAndChecksPipelineStages) {
  MoeConfig c = preset("tiny");
  c.num_shared = 1;
  c.d_shared = 16;
  const MoeWeights w = random_weights(c, DType::f32, 3);
  const Tensor x = random_tokens(64, c.d_model, DType::f32, 4);
  ForwardOptions opt;
  opt.time_stages = true;
  opt.rounding = RoundingOptions{};
  opt.rounding->tile = 16;
  ForwardTrace tr;
  const auto t0 = std::chrono::steady_clock::now();
  moe_forward(c, w, x, opt, &tr);
  const double wall = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::vector<std::string> names;
  double sum = 0;
  for (const StageTime& s : tr.stages) {
    names.push_back(s.name);
    EXPECT_GE(s.ms, 0.0) << s.name;
    sum += s.ms;
  }
  EXPECT_EQ(names, (std::vector<std::string>{"router", "rounding", "metadata", "experts", "combine", "shared_experts"}));
  EXPECT_LE(sum, wall + 1e-3);
  EXPECT_EQ(tr.path, "cpu");
  ForwardTrace quiet;
  moe_forward(c, w, x, {}, &quiet);
  EXPECT_TRUE(quiet.stages.empty());
  for (int bad : {-1, 5}) {
    ForwardOptions o;
    o.pipeline_stages = bad;
    try {
      moe_forward(c, w, x, o);
      ADD_FAILURE() << "pipeline_stages = " << bad << " was accepted";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("pipeline_stages"), std::string::npos) << e.what();
    }
  }
}
