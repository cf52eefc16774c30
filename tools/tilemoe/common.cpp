#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "commands.hpp"

namespace tilemoe::tool {

Timing time_runs(const std::function<void()>& fn, int repeats, Device device, const std::string& label) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  fn();
  synchronize(device);
  std::vector<double> ms;
  bool shown = false;
  const bool show_progress = isatty(STDERR_FILENO);  // a terminal, not a log
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = clock::now();
    fn();
    synchronize(device);
    ms.push_back(std::chrono::duration<double, std::milli>(clock::now() - t0).count());
    if (show_progress && std::chrono::duration<double>(clock::now() - start).count() > 1.0) {
      std::fprintf(stderr, "\r  %s %d/%d", label.c_str(), i + 1, repeats);
      shown = true;
    }
  }
  if (shown) std::fprintf(stderr, "\r%*s\r", static_cast<int>(label.size()) + 16, "");
  Timing t;
  t.repeats = repeats;
  std::sort(ms.begin(), ms.end());
  t.median_ms = ms[ms.size() / 2];
  t.min_ms = ms.front();
  return t;
}

double layer_bytes(const MoeConfig& c, DType dtype, std::int64_t T) {
  const double es = static_cast<double>(dtype_size(dtype));
  const double rows = is_gated(c.activation) ? 3.0 : 2.0;
  const double weights = es * rows * c.d_model *
                         (static_cast<double>(c.num_experts) * c.d_expert +
                          static_cast<double>(c.num_shared) * c.d_shared);
  const double A = static_cast<double>(T) * c.top_k;
  // x, out, logits, y (fp32), the CPU path's fp32 widening of one expert per thread, slack.
  const double acts = es * 2.0 * T * c.d_model + 4.0 * T * c.num_experts + 4.0 * A * c.d_model +
                      4.0 * A * rows * c.d_expert;
  return weights + acts;
}

void check_fits(const MoeConfig& c, DType dtype, std::int64_t T, Device device) {
  if (device != Device::cpu) return;  // device allocations fail with a DeviceError of their own
  const double have = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
  const double need = layer_bytes(c, dtype, T);
  if (need > 0.8 * have)
    throw InvalidArgument(detail::concat("config = ", c.name, " with ", T, " tokens in ", to_string(dtype),
                                         ": needs about ", need / 1e9, " GB, over 80% of this machine's ",
                                         have / 1e9, " GB; use fewer tokens, a smaller preset or a GPU"));
}

}  // namespace tilemoe::tool
