// Shared by the CPU tests: fn() must throw InvalidArgument whose message mentions a given text.
#pragma once
#include <gtest/gtest.h>

#include <string>

#include "tilemoe/error.hpp"

template <class Fn>
void expect_invalid(Fn fn, const std::string& must_mention) {
  try {
    fn();
    ADD_FAILURE() << "expected InvalidArgument mentioning '" << must_mention << "'";
  } catch (const tilemoe::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find(must_mention), std::string::npos) << e.what();
  }
}
