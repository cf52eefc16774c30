// Rates shared by the layer and whole-model costs. Internal to src/perf.
#pragma once
#include "tilemoe/perf_model.hpp"

namespace tilemoe::perf::detail_perf {

double flop_rate(const Hardware& hw, Precision p);    // achievable FLOP/s for the precision
double weight_bytes_per_param(Precision p);           // 2 bf16, 1 fp8
double compute_factor(const Workload& w);  // 1 inference, 3 training, 4 with recompute
double network_factor(const Workload& w);  // 1 inference, 2 training, 3 with recompute
double all_to_all_time(const Hardware& hw, int ep, double bytes_sent_per_gpu);

}  // namespace tilemoe::perf::detail_perf
