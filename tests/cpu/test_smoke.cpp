#include <gtest/gtest.h>
#include "tilemoe/tilemoe.hpp"
using namespace tilemoe;
TEST(Smoke, ForwardMatchesReference) {
  const MoeConfig& c = preset("tiny");
  auto w = random_weights(c, DType::f32, 1);
  auto x = random_tokens(37, c.d_model, DType::f32, 2);
  ForwardTrace tr;
  auto out = moe_forward(c, w, x, {}, &tr);
  auto ref = reference_forward(c, w, x, tr.routing);
  EXPECT_LT(relative_error(out.to_floats(), ref), 1e-5);
}
