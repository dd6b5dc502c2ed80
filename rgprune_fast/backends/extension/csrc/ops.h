// Declarations shared by the schema (bindings.cpp) and the device implementations.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace rgprune_fast {

// The name of the CPU kernel set in use ("DEFAULT", "AVX2").
const char* cpu_kernel_isa();

at::Tensor channel_stats_cpu(const at::Tensor& x, const at::Tensor& dx, int64_t channel_dim);
std::tuple<at::Tensor, at::Tensor> batchnorm_stats_cpu(const at::Tensor& z, const at::Tensor& dy,
                                                       const at::Tensor& mean, const at::Tensor& scale,
                                                       const at::Tensor& shift, bool need_dz);
std::tuple<at::Tensor, at::Tensor> relu_stats_cpu(const at::Tensor& r, const at::Tensor& dr,
                                                  std::optional<double> upper, int64_t channel_dim, bool need_dx);

}  // namespace rgprune_fast
