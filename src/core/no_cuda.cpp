// The CUDA backend's entry points for a build without CUDA: each says so.
#include "cuda_backend.hpp"

namespace tilemoe::detail {
namespace {
[[noreturn]] void no_cuda() {
  throw Error("device = cuda: this build of tilemoe has no CUDA backend (configure where nvcc "
              "is found, or with -DTILEMOE_CUDA=ON); use device cpu");
}
}  // namespace

bool cuda_built() { return false; }
bool cuda_device_present() { return false; }
std::shared_ptr<void> cuda_alloc(std::size_t) { no_cuda(); }
void cuda_copy(void*, const void*, std::size_t, CopyKind) { no_cuda(); }
void cuda_synchronize() {}
void cuda_release_cached() {}
int cuda_pointer_device(const void*) { return -1; }
int cuda_current_device() { no_cuda(); }
std::string cuda_device_name() { return "none"; }
Tensor cuda_moe_forward(const MoeConfig&, const MoeWeights&, const Tensor&, const ForwardOptions&,
                        ForwardTrace*, Tensor) {
  no_cuda();
}

}  // namespace tilemoe::detail
