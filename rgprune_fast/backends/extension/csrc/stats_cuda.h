// The CUDA launchers (stats_cuda.cu), callable from plain C++: raw pointers, sizes, element strides
// and a stream; no torch types, so that the .cu file needs only the CUDA headers (and compile-checks
// with nvcc against a CPU build of torch).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace rgprune_fast::cuda {

enum DType : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };
enum OpKind : int { kChannel = 0, kBatchNorm = 1, kRelu = 2 };

struct Geometry {
  int64_t N = 0, C = 0, P = 0;
  bool channels_last = false;         // [N, P, C] with channel stride 1, else [N, C, P] with position stride 1
  int64_t a_n = 0, a_c = 0, a_p = 0;  // first input (x, z, r)
  int64_t b_n = 0, b_c = 0, b_p = 0;  // second input (dx, dy, dr)
  int64_t o_n = 0, o_c = 0, o_p = 0;  // output (dz, dx), when written
};

struct Args {
  const void* a = nullptr;
  const void* b = nullptr;
  void* out = nullptr;  // dz / dx, or null
  const void* mean = nullptr;  // batchnorm: [C], accumulation dtype
  const void* scale = nullptr;
  const void* shift = nullptr;
  bool has_upper = false;  // relu: ReLU6-style upper bound
  double upper = 0;
  void* s = nullptr;          // [N, C] contiguous, accumulation dtype (float, double for double)
  void* workspace = nullptr;  // workspace_bytes(...) bytes, when that is not 0
};

// Scratch space the launch needs (partial sums of the split reduction), in bytes; 0 for none.
int64_t workspace_bytes(const Geometry& g, DType dtype, OpKind op);

// Enqueues the reduction on `stream`; returns the launch error, if any. Requires N * C > 0, P > 0.
cudaError_t launch(const Geometry& g, DType dtype, OpKind op, const Args& args, cudaStream_t stream);

}  // namespace rgprune_fast::cuda
