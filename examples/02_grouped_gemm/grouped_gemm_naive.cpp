// Step 2a: the experts one after the other ("Sequential!"): the host loops over the experts and
// runs one cuBLAS GEMM pair (with an activation kernel between) for each, after copying the
// per-expert counts to the host. Small experts leave most of the GPU idle.
#include "common.hpp"

int main(int argc, char** argv) {
  return example::run(argc, argv, "grouped_gemm_naive", tilemoe::Algorithm::sequential);
}
