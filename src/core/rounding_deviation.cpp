// The cost side of token rounding: how far the layer output moves from plain top-k routing.
// Two forwards through moe_forward, one with and one without rounding, compared in double.
#include "tilemoe/moe_layer.hpp"
#include "tilemoe/rounding.hpp"

namespace tilemoe {

double rounding_output_deviation(const MoeConfig& cfg, const MoeWeights& w, const Tensor& x,
                                 const RoundingOptions& opt, RoundingMetrics* metrics) {
  opt.validate();
  const Tensor base = moe_forward(cfg, w, x);
  ForwardOptions fo;
  fo.rounding = opt;
  ForwardTrace trace;
  const Tensor rounded = moe_forward(cfg, w, x, fo, &trace);
  if (metrics && trace.rounding) *metrics = *trace.rounding;
  return relative_error(rounded.to_floats(), base.to_doubles());
}

}  // namespace tilemoe
