#include "layout.h"

#include <ATen/ATen.h>
#include <ATen/WrapDimUtils.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <numeric>

namespace rgprune_fast {
namespace {

// Position dims of size > 1 in the order given, collapsed if their strides chain; returns false if
// they do not chain (gaps or overlap inside the positions).
bool collapse(const at::Tensor& t, const std::vector<int64_t>& dims, int64_t* inner_stride) {
  int64_t prev = -1;
  *inner_stride = 1;
  for (int64_t d : dims) {
    if (t.size(d) == 1) continue;
    if (prev >= 0 && t.stride(prev) != t.stride(d) * t.size(d)) return false;
    prev = d;
    *inner_stride = t.stride(d);
  }
  return true;
}

std::vector<int64_t> order(const Plan& plan) {
  // Original dims in the plan's memory order, outermost first.
  std::vector<int64_t> perm{0};
  if (plan.kind == Kind::ChannelsFirst) perm.push_back(plan.channel_dim);
  perm.insert(perm.end(), plan.pos_dims.begin(), plan.pos_dims.end());
  if (plan.kind == Kind::ChannelsLast) perm.push_back(plan.channel_dim);
  return perm;
}

}  // namespace

Plan make_plan(const at::Tensor& t, int64_t channel_dim) {
  Plan plan;
  plan.channel_dim = channel_dim;
  plan.N = t.size(0);
  plan.C = t.size(channel_dim);
  plan.P = 1;
  std::vector<int64_t> natural;
  for (int64_t d = 1; d < t.dim(); ++d) {
    if (d == channel_dim) continue;
    natural.push_back(d);
    plan.P *= t.size(d);
  }
  // Outer to inner by stride (stable, so ties keep dim order).
  std::vector<int64_t> sorted = natural;
  std::stable_sort(sorted.begin(), sorted.end(), [&](int64_t a, int64_t b) { return t.stride(a) > t.stride(b); });
  int64_t sp = 1;
  const bool chained = collapse(t, sorted, &sp);
  const bool cf_ok = chained && (plan.P == 1 || sp == 1);
  const bool cl_ok = chained && (plan.C == 1 || t.stride(channel_dim) == 1);
  plan.pos_dims = sorted;
  if (cf_ok && cl_ok) {
    // Only when P == 1 or C == 1: vectorise over the longer of the two.
    plan.kind = (plan.P == 1 && plan.C > 1) ? Kind::ChannelsLast : Kind::ChannelsFirst;
  } else if (cf_ok) {
    plan.kind = Kind::ChannelsFirst;
  } else if (cl_ok) {
    plan.kind = Kind::ChannelsLast;
  } else {
    plan.pos_dims = natural;
    plan.kind = channel_dim == t.dim() - 1 && t.dim() > 2 ? Kind::ChannelsLast : Kind::ChannelsFirst;
  }
  return plan;
}

bool fits(const at::Tensor& t, const Plan& plan, Strides3* out) {
  int64_t sp = 1;
  if (!collapse(t, plan.pos_dims, &sp)) return false;
  const int64_t sc = t.stride(plan.channel_dim);
  if (plan.kind == Kind::ChannelsFirst) {
    if (plan.P > 1 && sp != 1) return false;
    out->p = 1;
    out->c = sc;
  } else {
    if (plan.C > 1 && sc != 1) return false;
    out->c = 1;
    out->p = sp;
  }
  out->n = t.stride(0);
  return true;
}

at::Tensor empty_in_plan(const at::Tensor& like, const Plan& plan) {
  const std::vector<int64_t> perm = order(plan);
  std::vector<int64_t> sizes;
  for (int64_t d : perm) sizes.push_back(like.size(d));
  std::vector<int64_t> inverse(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inverse[perm[i]] = static_cast<int64_t>(i);
  return at::empty(sizes, like.options()).permute(inverse);
}

at::Tensor conform(const at::Tensor& t, const Plan& plan) {
  Strides3 s;
  if (fits(t, plan, &s)) return t;
  at::Tensor out = empty_in_plan(t, plan);
  out.copy_(t);
  return out;
}

Strides3 strides_in(const at::Tensor& t, const Plan& plan) {
  Strides3 s;
  TORCH_INTERNAL_ASSERT(fits(t, plan, &s), "rgprune_fast: tensor does not fit the layout plan");
  return s;
}

PlannedOutput planned_output(const at::Tensor& like, const Plan& plan) {
  PlannedOutput o;
  o.result = at::empty_like(like);
  o.target = fits(o.result, plan, &o.strides) ? o.result : empty_in_plan(like, plan);
  o.strides = strides_in(o.target, plan);
  return o;
}

void PlannedOutput::finish() {
  if (!target.is_same(result)) result.copy_(target);
}

int64_t check_pair(const char* op, const at::Tensor& a, const at::Tensor& b, int64_t channel_dim) {
  TORCH_CHECK(a.dim() >= 2, "rgprune_fast::", op, ": expected a tensor with at least 2 dims ([N, C, ...]), got ",
              a.sizes());
  TORCH_CHECK(a.sizes() == b.sizes(), "rgprune_fast::", op, ": shapes differ: ", a.sizes(), " vs ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "rgprune_fast::", op, ": dtypes differ: ", a.scalar_type(), " vs ",
              b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), "rgprune_fast::", op, ": devices differ: ", a.device(), " vs ", b.device());
  const auto st = a.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, "rgprune_fast::", op,
              ": unsupported dtype ", st, " (float32, float64, float16, bfloat16)");
  const int64_t cd = at::maybe_wrap_dim(channel_dim, a.dim());
  TORCH_CHECK(cd >= 1, "rgprune_fast::", op, ": the channel dim cannot be dim 0 (the example dim)");
  return cd;
}

void check_per_channel(const char* op, const char* name, const at::Tensor& v, const at::Tensor& like, int64_t C) {
  const auto want = stat_type(like.scalar_type());
  TORCH_CHECK(v.dim() == 1 && v.size(0) == C, "rgprune_fast::", op, ": ", name, " must have shape [", C, "], got ",
              v.sizes());
  TORCH_CHECK(v.scalar_type() == want, "rgprune_fast::", op, ": ", name, " must be ", want, " for ",
              like.scalar_type(), " inputs, got ", v.scalar_type());
  TORCH_CHECK(v.device() == like.device(), "rgprune_fast::", op, ": ", name, " is on ", v.device(), ", inputs on ",
              like.device());
}

}  // namespace rgprune_fast
