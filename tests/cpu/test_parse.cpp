// The command-line number parsers of error.hpp: the value, its bounds, and a message that names
// the flag and the text as given.
#include <gtest/gtest.h>

#include <cmath>

#include "expect_invalid.hpp"
#include "tilemoe/error.hpp"

using tilemoe::parse_double;
using tilemoe::parse_int;

TEST(Parse, IntegersInRange) {
  EXPECT_EQ(parse_int("--tokens", "4096", 1, 1 << 24), 4096);
  EXPECT_EQ(parse_int("--seed", "0", 0, 10), 0);
  EXPECT_EQ(parse_int("--x", "-3", -5, 5), -3);
  EXPECT_EQ(parse_int("--x", "16777216", 1, 1 << 24), 1 << 24);
}

TEST(Parse, IntegersRejected) {
  expect_invalid([] { parse_int("--tokens", "4x", 1, 100); }, "--tokens = '4x': expected an integer in [1, 100]");
  expect_invalid([] { parse_int("--tokens", "", 1, 100); }, "--tokens = ''");
  expect_invalid([] { parse_int("--tokens", " 4", 1, 100); }, "' 4'");
  expect_invalid([] { parse_int("--tokens", "0", 1, 100); }, "'0'");
  expect_invalid([] { parse_int("--tokens", "101", 1, 100); }, "'101'");
  expect_invalid([] { parse_int("--tokens", "99999999999999999999", 1, 100); }, "'99999999999999999999'");
  expect_invalid([] { parse_int("--tokens", "1.5", 1, 100); }, "'1.5'");
}

TEST(Parse, NumbersInRange) {
  EXPECT_DOUBLE_EQ(parse_double("--skew", "1.25", 0, 10), 1.25);
  EXPECT_DOUBLE_EQ(parse_double("--skew", "0", 0, 10), 0.0);
  EXPECT_DOUBLE_EQ(parse_double("--skew", "1e1", 0, 10), 10.0);
  EXPECT_DOUBLE_EQ(parse_double("--x", "-2.5", -3, 3), -2.5);
}

TEST(Parse, NumbersRejected) {
  expect_invalid([] { parse_double("--skew", "x", 0, 10); }, "--skew = 'x': expected a number in [0, 10]");
  expect_invalid([] { parse_double("--skew", "", 0, 10); }, "--skew = ''");
  expect_invalid([] { parse_double("--skew", "1.5y", 0, 10); }, "'1.5y'");
  expect_invalid([] { parse_double("--skew", "-0.5", 0, 10); }, "'-0.5'");
  expect_invalid([] { parse_double("--skew", "10.5", 0, 10); }, "'10.5'");
  expect_invalid([] { parse_double("--skew", "nan", 0, 10); }, "'nan'");
  expect_invalid([] { parse_double("--skew", "inf", 0, 10); }, "'inf'");
  expect_invalid([] { parse_double("--skew", "1e999", 0, 1e300); }, "'1e999'");
}
