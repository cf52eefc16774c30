// The measurements behind `tilemoe demo`, one function per checklist item.
#pragma once
#include <string>
#include <vector>

#include "tilemoe/tilemoe.hpp"

namespace tilemoe::tool {

enum class CheckStatus { pass, fail, unavailable };

struct CheckResult {
  std::string item;
  CheckStatus status = CheckStatus::unavailable;
  double value = 0;     // the measured figure the item is judged by
  std::string detail;   // what was measured, or why it could not be
};

struct DemoSetup {
  MoeConfig cfg;
  Device device = Device::cpu;
  std::int64_t tokens = 4096;
  DType dtype = DType::bf16;
  int repeats = 3;
  std::uint64_t seed = 1;
  bool verbose = true;  // progress lines on stdout
};

std::vector<CheckResult> run_demo_checks(const DemoSetup& s);

}  // namespace tilemoe::tool
