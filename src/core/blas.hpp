// The one BLAS call the CPU path needs, C = A . B^T (+ beta C), and a guard that sets how many
// threads OpenBLAS may use while it lives.
#pragma once
#include <cstdint>

namespace tilemoe::detail {

// A [m, k] (row stride lda), B [n, k] (row stride ldb), C [m, n] (row stride ldc), all fp32.
void gemm_nt(std::int64_t m, std::int64_t n, std::int64_t k, const float* A, std::int64_t lda,
             const float* B, std::int64_t ldb, float* C, std::int64_t ldc, float beta = 0.0f);

int hardware_threads();

class BlasThreads {
 public:
  explicit BlasThreads(int n);
  ~BlasThreads();
  BlasThreads(const BlasThreads&) = delete;
  BlasThreads& operator=(const BlasThreads&) = delete;

 private:
  int saved_;
};

}  // namespace tilemoe::detail
