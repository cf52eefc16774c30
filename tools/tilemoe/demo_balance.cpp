#include "demo_checks.hpp"
namespace tilemoe::tool {
CheckResult check_load_balancing(const DemoSetup&) {
  CheckResult r{"Load balancing keeps expert usage within 2x range"};
  r.detail = "PENDING";
  return r;
}
}  // namespace tilemoe::tool
