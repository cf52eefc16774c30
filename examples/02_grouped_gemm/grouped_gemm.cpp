// Step 2b: all experts in one launch per projection. The row tiles of every expert form one
// list, built on the GPU from the per-expert offsets; each thread block finds its expert by a
// binary search, gathers its token rows inside the GEMM's loads and applies SwiGLU before
// storing. No host synchronization: the whole layer can be captured in a CUDA graph.
#include "common.hpp"

int main(int argc, char** argv) {
  return example::run(argc, argv, "grouped_gemm", tilemoe::Algorithm::grouped);
}
