// CPU implementations of the ops: layout normalisation, output allocation, dtype and ISA dispatch,
// and at::parallel_for over the kernels' work items (cpu_kernels.h). Compiled for the baseline ISA.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <algorithm>
#include <string>

#include "cpu_kernels.h"
#include "layout.h"
#include "ops.h"

namespace rgprune_fast {
namespace {

const cpu::KernelTable& kernels() {
  static const cpu::KernelTable* table = [] {
    const std::string cap = at::get_cpu_capability();  // honours ATEN_CPU_CAPABILITY
    const cpu::KernelTable* avx2 = cpu::kernels_avx2();
    if (avx2 && (cap == "AVX2" || cap == "AVX512")) return avx2;
    return cpu::kernels_default();
  }();
  return *table;
}

int dtype_index(at::ScalarType st) {
  switch (st) {
    case at::kFloat:
      return cpu::kF32;
    case at::kDouble:
      return cpu::kF64;
    case at::kHalf:
      return cpu::kF16;
    case at::kBFloat16:
      return cpu::kBF16;
    default:
      TORCH_CHECK(false, "rgprune_fast: unsupported dtype ", st);
  }
}

struct Launch {
  Plan plan;
  cpu::Geometry g;
  int64_t items = 0, grain = 1;
  bool last = false;
};

// Geometry and work split for inputs a, b already conformed to `plan`.
Launch prepare(const Plan& plan, const at::Tensor& a, const at::Tensor& b) {
  Launch l;
  l.plan = plan;
  l.last = plan.kind == Kind::ChannelsLast;
  cpu::Geometry& g = l.g;
  g.N = plan.N;
  g.C = plan.C;
  g.P = plan.P;
  const Strides3 sa = strides_in(a, plan), sb = strides_in(b, plan);
  g.a_n = sa.n, g.a_c = sa.c, g.a_p = sa.p;
  g.b_n = sb.n, g.b_c = sb.c, g.b_p = sb.p;
  int64_t per_item = 0;
  if (l.last) {
    // Channel blocks small enough to give every thread a few items, large enough for long rows.
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    const int64_t per_n = std::max<int64_t>(1, (4 * threads + g.N - 1) / g.N);
    int64_t cb = (g.C + per_n - 1) / per_n;
    cb = (cb + 15) / 16 * 16;
    g.cblock = std::clamp<int64_t>(cb, 16, cpu::kMaxChannelBlock);
    l.items = g.N * ((g.C + g.cblock - 1) / g.cblock);
    per_item = g.P * g.cblock;
  } else {
    l.items = g.N * g.C;
    per_item = g.P;
  }
  l.grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, per_item));
  return l;
}

void set_output(cpu::Geometry* g, const PlannedOutput& o) {
  g->o_n = o.strides.n, g->o_c = o.strides.c, g->o_p = o.strides.p;
}

}  // namespace

const char* cpu_kernel_isa() { return kernels().isa; }

at::Tensor channel_stats_cpu(const at::Tensor& x, const at::Tensor& dx, int64_t channel_dim) {
  const int64_t cd = check_pair("channel_stats", x, dx, channel_dim);
  const Plan plan = make_plan(x, cd);
  at::Tensor s = at::empty({plan.N, plan.C}, x.options().dtype(stat_type(x.scalar_type())));
  if (s.numel() == 0) return s;
  if (plan.P == 0) return s.zero_();
  const at::Tensor a = conform(x, plan), b = conform(dx, plan);
  const Launch l = prepare(plan, a, b);
  const cpu::ChannelFn fn = kernels().channel[l.last][dtype_index(x.scalar_type())];
  const void *pa = a.const_data_ptr(), *pb = b.const_data_ptr();
  void* ps = s.mutable_data_ptr();
  at::parallel_for(0, l.items, l.grain, [&](int64_t begin, int64_t end) { fn(l.g, pa, pb, ps, begin, end); });
  return s;
}

std::tuple<at::Tensor, at::Tensor> batchnorm_stats_cpu(const at::Tensor& z, const at::Tensor& dy,
                                                       const at::Tensor& mean, const at::Tensor& scale,
                                                       const at::Tensor& shift, bool need_dz) {
  check_pair("batchnorm_stats", z, dy, 1);
  const Plan plan = make_plan(z, 1);
  for (const auto& [name, v] : {std::pair<const char*, const at::Tensor&>{"mean", mean}, {"scale", scale},
                                {"shift", shift}})
    check_per_channel("batchnorm_stats", name, v, z, plan.C);
  at::Tensor s = at::empty({plan.N, plan.C}, z.options().dtype(stat_type(z.scalar_type())));
  at::Tensor dz = need_dz ? at::empty_like(dy) : at::empty({0}, dy.options());
  if (z.numel() == 0) return {dz, s.zero_()};
  const at::Tensor a = conform(z, plan), b = conform(dy, plan);
  Launch l = prepare(plan, a, b);
  PlannedOutput out;
  if (need_dz) {
    out = planned_output(dy, plan);
    set_output(&l.g, out);
  }
  const at::Tensor m = mean.contiguous(), sc = scale.contiguous(), sh = shift.contiguous();
  const cpu::BatchNormFn fn = kernels().batchnorm[l.last][dtype_index(z.scalar_type())];
  const void *pa = a.const_data_ptr(), *pb = b.const_data_ptr();
  const void *pm = m.const_data_ptr(), *psc = sc.const_data_ptr(), *psh = sh.const_data_ptr();
  void* po = need_dz ? out.target.mutable_data_ptr() : nullptr;
  void* ps = s.mutable_data_ptr();
  at::parallel_for(0, l.items, l.grain,
                   [&](int64_t begin, int64_t end) { fn(l.g, pa, pb, pm, psc, psh, po, ps, begin, end); });
  if (need_dz) {
    out.finish();
    dz = out.result;
  }
  return {dz, s};
}

std::tuple<at::Tensor, at::Tensor> relu_stats_cpu(const at::Tensor& r, const at::Tensor& dr,
                                                  std::optional<double> upper, int64_t channel_dim, bool need_dx) {
  const int64_t cd = check_pair("relu_stats", r, dr, channel_dim);
  const Plan plan = make_plan(r, cd);
  at::Tensor s = at::empty({plan.N, plan.C}, r.options().dtype(stat_type(r.scalar_type())));
  at::Tensor dx = need_dx ? at::empty_like(dr) : at::empty({0}, dr.options());
  if (r.numel() == 0) return {dx, s.zero_()};
  const at::Tensor a = conform(r, plan), b = conform(dr, plan);
  Launch l = prepare(plan, a, b);
  PlannedOutput out;
  if (need_dx) {
    out = planned_output(dr, plan);
    set_output(&l.g, out);
  }
  const cpu::ReluFn fn = kernels().relu[l.last][dtype_index(r.scalar_type())];
  const void *pa = a.const_data_ptr(), *pb = b.const_data_ptr();
  void* po = need_dx ? out.target.mutable_data_ptr() : nullptr;
  void* ps = s.mutable_data_ptr();
  const bool has_upper = upper.has_value();
  const double up = upper.value_or(0.0);
  at::parallel_for(0, l.items, l.grain,
                   [&](int64_t begin, int64_t end) { fn(l.g, pa, pb, has_upper, up, po, ps, begin, end); });
  if (need_dx) {
    out.finish();
    dx = out.result;
  }
  return {dx, s};
}

TORCH_LIBRARY_IMPL(rgprune_fast, CPU, m) {
  m.impl("channel_stats", &channel_stats_cpu);
  m.impl("batchnorm_stats", &batchnorm_stats_cpu);
  m.impl("relu_stats", &relu_stats_cpu);
}

}  // namespace rgprune_fast
