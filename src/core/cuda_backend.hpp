// The seam between the portable core and the CUDA backend. Plain C++ declarations only: the
// core never includes a CUDA header. src/cuda/ implements these when the library is built with
// CUDA; src/core/no_cuda.cpp implements them otherwise (each throws, saying so).
#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include "tilemoe/moe_layer.hpp"

namespace tilemoe::detail {

bool cuda_built();             // compiled with the CUDA backend
bool cuda_device_present();    // ... and a device answers
// Device memory for a tensor, freed when the last owner lets go (cuda/runtime.cu says how).
std::shared_ptr<void> cuda_alloc(std::size_t bytes);
enum class CopyKind { host_to_device, device_to_host, device_to_device };
void cuda_copy(void* dst, const void* src, std::size_t bytes, CopyKind kind);
void cuda_synchronize();
// Waits for the devices, then gives the pools' unused memory and this thread's scratch buffers
// back to the driver (release_cached_memory).
void cuda_release_cached();
// What memory p points into: -1 not device memory (host memory, or nothing CUDA knows), else the
// device that holds it (device or managed memory).
int cuda_pointer_device(const void* p);
// This thread's GPU.
int cuda_current_device();
std::string cuda_device_name();

// Throws InvalidArgument naming topk_ids[t, k] or topk_weights[t, k] unless token t of a given
// routing has K distinct expert ids in [0, E) and finite weights (ids, weights: its K values).
void check_given_routing_row(std::int64_t t, const std::int32_t* ids, const float* weights, int K, int E);

// out: where the output goes (checked by the caller: [T, d], x's dtype and device, apart from
// x), or undefined: a new tensor.
Tensor cuda_moe_forward(const MoeConfig& cfg, const MoeWeights& w, const Tensor& x,
                        const ForwardOptions& opt, ForwardTrace* trace, Tensor out = {});

}  // namespace tilemoe::detail
