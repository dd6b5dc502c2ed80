// Layout normalisation shared by the CPU and CUDA glue.
//
// Every op reduces over "positions": all dims except dim 0 (the example) and the channel dim. The
// kernels understand exactly two 3-D shapes, both with arbitrary (element) strides for n:
//   ChannelsFirst  [N, C, P]: positions contiguous (stride 1), any channel stride (NCHW, [N, C, L]);
//   ChannelsLast   [N, P, C]: channels contiguous (stride 1), any position stride (NHWC, [N, T, C]).
// A Plan says which one and in what order the original position dims are flattened (outer to
// inner). The first input decides the plan; other inputs must flatten the SAME way (same dim order),
// or they are copied into the plan's layout (documented slow path, also taken for inputs that fit no
// plan, e.g. a slice with gaps inside the positions or an expanded gradient).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace rgprune_fast {

enum class Kind { ChannelsFirst, ChannelsLast };

struct Strides3 {
  int64_t n = 0, c = 0, p = 0;
};

struct Plan {
  Kind kind = Kind::ChannelsFirst;
  int64_t channel_dim = 1;
  int64_t N = 0, C = 0, P = 0;
  std::vector<int64_t> pos_dims;  // position dims, outer to inner
};

// The plan for `t` (channel dim already wrapped); a layout that fits neither kind gets the natural
// plan (channels-last when the channel dim is the last one, else channels-first).
Plan make_plan(const at::Tensor& t, int64_t channel_dim);

// Element strides of `t` seen through `plan`, or false when `t` does not fit it.
bool fits(const at::Tensor& t, const Plan& plan, Strides3* out);

// `t` itself when it fits `plan`, else a copy laid out densely in the plan's order.
at::Tensor conform(const at::Tensor& t, const Plan& plan);

// A fresh tensor shaped like `like`, dense in the plan's order (fits `plan` by construction).
at::Tensor empty_in_plan(const at::Tensor& like, const Plan& plan);

// Strides of `t` through `plan`; `t` must fit (checked).
Strides3 strides_in(const at::Tensor& t, const Plan& plan);

// An op's elementwise output (dz, dx): `result` is allocated like at::empty_like(like), which is what
// the fake implementation returns. When that layout does not fit the plan (rare: `like` was itself
// conformed by a copy), the kernel writes `target`, laid out in the plan, and finish() copies it over.
struct PlannedOutput {
  at::Tensor result, target;
  Strides3 strides;  // of target
  void finish();
};
PlannedOutput planned_output(const at::Tensor& like, const Plan& plan);

// The statistics dtype, the one rule (the same as stat_dtype in backends/contract.py; opcheck compares
// them through the fake implementations): float64 for float64 inputs, float32 for everything else.
inline at::ScalarType stat_type(at::ScalarType input) { return input == at::kDouble ? at::kDouble : at::kFloat; }

// Common argument checks; returns the wrapped channel dim.
int64_t check_pair(const char* op, const at::Tensor& a, const at::Tensor& b, int64_t channel_dim);
void check_per_channel(const char* op, const char* name, const at::Tensor& v, const at::Tensor& like, int64_t C);

}  // namespace rgprune_fast
