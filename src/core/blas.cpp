#include "blas.hpp"

#include <cblas.h>

#include <algorithm>
#include <thread>

namespace tilemoe::detail {

void gemm_nt(std::int64_t m, std::int64_t n, std::int64_t k, const float* A, std::int64_t lda,
             const float* B, std::int64_t ldb, float* C, std::int64_t ldc, float beta) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m),
              static_cast<blasint>(n), static_cast<blasint>(k), 1.0f, A, static_cast<blasint>(lda), B,
              static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}

int hardware_threads() { return std::max(1u, std::thread::hardware_concurrency()); }

BlasThreads::BlasThreads(int n) : saved_(openblas_get_num_threads()) { openblas_set_num_threads(n); }
BlasThreads::~BlasThreads() { openblas_set_num_threads(saved_); }

}  // namespace tilemoe::detail
