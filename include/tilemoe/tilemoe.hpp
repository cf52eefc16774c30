// The whole public API.
#pragma once
#include "tilemoe/balance.hpp"
#include "tilemoe/config.hpp"
#include "tilemoe/dtype.hpp"
#include "tilemoe/error.hpp"
#include "tilemoe/moe_layer.hpp"
#include "tilemoe/perf_model.hpp"
#include "tilemoe/rounding.hpp"
#include "tilemoe/routing.hpp"
#include "tilemoe/tensor.hpp"
