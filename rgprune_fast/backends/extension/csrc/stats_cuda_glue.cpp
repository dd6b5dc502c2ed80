// CUDA implementations of the ops: the torch side (checks, layout normalisation, outputs, workspace,
// current stream) around the launchers of stats_cuda.cu. Compiled only in builds with CUDA.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "layout.h"
#include "stats_cuda.h"

namespace rgprune_fast {
namespace {

cuda::DType dtype_of(at::ScalarType st) {
  switch (st) {
    case at::kFloat:
      return cuda::kF32;
    case at::kDouble:
      return cuda::kF64;
    case at::kHalf:
      return cuda::kF16;
    case at::kBFloat16:
      return cuda::kBF16;
    default:
      TORCH_CHECK(false, "rgprune_fast: unsupported dtype ", st);
  }
}

cuda::Geometry geometry(const Plan& plan, const at::Tensor& a, const at::Tensor& b, const PlannedOutput* out) {
  cuda::Geometry g;
  g.N = plan.N, g.C = plan.C, g.P = plan.P;
  g.channels_last = plan.kind == Kind::ChannelsLast;
  const Strides3 sa = strides_in(a, plan), sb = strides_in(b, plan);
  g.a_n = sa.n, g.a_c = sa.c, g.a_p = sa.p;
  g.b_n = sb.n, g.b_c = sb.c, g.b_p = sb.p;
  if (out) g.o_n = out->strides.n, g.o_c = out->strides.c, g.o_p = out->strides.p;
  return g;
}

// Runs one op; a and b are conformed to plan, s is [N, C] and N * C * P > 0.
void run(cuda::OpKind op, const Plan& plan, const at::Tensor& a, const at::Tensor& b, PlannedOutput* out,
         const at::Tensor* params, std::optional<double> upper, at::Tensor& s) {
  const cuda::Geometry g = geometry(plan, a, b, out);
  const cuda::DType dt = dtype_of(a.scalar_type());
  const int64_t ws_bytes = cuda::workspace_bytes(g, dt, op);
  at::Tensor ws = ws_bytes ? at::empty({ws_bytes}, a.options().dtype(at::kByte)) : at::Tensor();
  cuda::Args args;
  args.a = a.const_data_ptr();
  args.b = b.const_data_ptr();
  args.out = out ? out->target.mutable_data_ptr() : nullptr;
  if (params) {
    args.mean = params[0].const_data_ptr();
    args.scale = params[1].const_data_ptr();
    args.shift = params[2].const_data_ptr();
  }
  args.has_upper = upper.has_value();
  args.upper = upper.value_or(0.0);
  args.s = s.mutable_data_ptr();
  args.workspace = ws_bytes ? ws.mutable_data_ptr() : nullptr;
  C10_CUDA_CHECK(cuda::launch(g, dt, op, args, c10::cuda::getCurrentCUDAStream(a.device().index()).stream()));
}

at::Tensor channel_stats_cuda(const at::Tensor& x, const at::Tensor& dx, int64_t channel_dim) {
  const int64_t cd = check_pair("channel_stats", x, dx, channel_dim);
  const c10::cuda::CUDAGuard guard(x.device());
  const Plan plan = make_plan(x, cd);
  at::Tensor s = at::empty({plan.N, plan.C}, x.options().dtype(stat_type(x.scalar_type())));
  if (s.numel() == 0) return s;
  if (plan.P == 0) return s.zero_();
  const at::Tensor a = conform(x, plan), b = conform(dx, plan);
  run(cuda::kChannel, plan, a, b, nullptr, nullptr, std::nullopt, s);
  return s;
}

std::tuple<at::Tensor, at::Tensor> batchnorm_stats_cuda(const at::Tensor& z, const at::Tensor& dy,
                                                        const at::Tensor& mean, const at::Tensor& scale,
                                                        const at::Tensor& shift, bool need_dz) {
  check_pair("batchnorm_stats", z, dy, 1);
  const c10::cuda::CUDAGuard guard(z.device());
  const Plan plan = make_plan(z, 1);
  check_per_channel("batchnorm_stats", "mean", mean, z, plan.C);
  check_per_channel("batchnorm_stats", "scale", scale, z, plan.C);
  check_per_channel("batchnorm_stats", "shift", shift, z, plan.C);
  at::Tensor s = at::empty({plan.N, plan.C}, z.options().dtype(stat_type(z.scalar_type())));
  at::Tensor dz = need_dz ? at::empty_like(dy) : at::empty({0}, dy.options());
  if (z.numel() == 0) return {dz, s.zero_()};
  const at::Tensor a = conform(z, plan), b = conform(dy, plan);
  const at::Tensor params[3] = {mean.contiguous(), scale.contiguous(), shift.contiguous()};
  PlannedOutput out;
  if (need_dz) out = planned_output(dy, plan);
  run(cuda::kBatchNorm, plan, a, b, need_dz ? &out : nullptr, params, std::nullopt, s);
  if (need_dz) {
    out.finish();
    dz = out.result;
  }
  return {dz, s};
}

std::tuple<at::Tensor, at::Tensor> relu_stats_cuda(const at::Tensor& r, const at::Tensor& dr,
                                                   std::optional<double> upper, int64_t channel_dim, bool need_dx) {
  const int64_t cd = check_pair("relu_stats", r, dr, channel_dim);
  const c10::cuda::CUDAGuard guard(r.device());
  const Plan plan = make_plan(r, cd);
  at::Tensor s = at::empty({plan.N, plan.C}, r.options().dtype(stat_type(r.scalar_type())));
  at::Tensor dx = need_dx ? at::empty_like(dr) : at::empty({0}, dr.options());
  if (r.numel() == 0) return {dx, s.zero_()};
  const at::Tensor a = conform(r, plan), b = conform(dr, plan);
  PlannedOutput out;
  if (need_dx) out = planned_output(dr, plan);
  run(cuda::kRelu, plan, a, b, need_dx ? &out : nullptr, nullptr, upper, s);
  if (need_dx) {
    out.finish();
    dx = out.result;
  }
  return {dx, s};
}

}  // namespace

TORCH_LIBRARY_IMPL(rgprune_fast, CUDA, m) {
  m.impl("channel_stats", &channel_stats_cuda);
  m.impl("batchnorm_stats", &batchnorm_stats_cuda);
  m.impl("relu_stats", &relu_stats_cuda);
}

}  // namespace rgprune_fast
