// The CPU kernels, written once against at::vec::Vectorized and compiled once per ISA: a
// cpu_kernels_<isa>.cpp file defines CPU_CAPABILITY (DEFAULT, AVX2), includes <ATen/cpu/vec/vec.h>
// under the matching code generation, then this header. Everything lands in the namespace
// rgprune_fast::cpu::<CPU_CAPABILITY>, so the builds never clash.
//
// Numerics (the contract of backends/torch_ref.py): inputs are widened to float (double for double),
// products and sums are formed there, outputs written in the input dtype are rounded once.
//   channel:   s = sum_p a * b
//   batchnorm: s = scale * sum_p (z - mean) * dy + shift * sum_p dy,  dz = dy * scale
//   relu:      dx = dr where 0 < r (< upper) else 0,  s = sum_p r * dx
// The summation order is fixed by the shape alone: channels-first rows use 4 interleaved vector
// accumulators (4 * width partial sums, combined in a fixed tree); channels-last accumulates each
// channel over positions in chunks of kChunk, chunk sums added in order.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu_kernels.h"

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY and include <ATen/cpu/vec/vec.h> before cpu_kernels_impl.h"
#endif

#define RGP_STR2(x) #x
#define RGP_STR(x) RGP_STR2(x)

namespace rgprune_fast::cpu::CPU_CAPABILITY {

using at::vec::Vectorized;

// ---- loads and stores in the accumulation type: M vectors of V cover K elements of T ----

template <typename V, typename T>
inline V load_partial(const T* p, int64_t count) {
  alignas(64) unsigned char buf[sizeof(V)] = {};
  std::memcpy(buf, p, count * sizeof(T));
  return V::loadu(buf);
}

template <typename V, typename T>
inline void store_partial(const V& v, T* p, int64_t count) {
  alignas(64) unsigned char buf[sizeof(V)];
  v.store(buf);
  std::memcpy(p, buf, count * sizeof(T));
}

template <typename T>
struct Io {  // float, double: one vector of the type itself
  using acc_t = T;
  using V = Vectorized<T>;
  static constexpr int M = 1;
  static constexpr int64_t K = V::size();
  static inline void load(const T* p, V* v) { v[0] = V::loadu(p); }
  static inline void load(const T* p, int64_t n, V* v) { v[0] = load_partial<V>(p, n); }
  static inline void store(T* p, const V* v) { v[0].store(p); }
  static inline void store(T* p, int64_t n, const V* v) { store_partial(v[0], p, n); }
};

template <typename R>
struct IoReduced {  // Half, BFloat16: one vector of R widens to two float vectors
  using acc_t = float;
  using V = Vectorized<float>;
  using RV = Vectorized<R>;
  static constexpr int M = 2;
  static constexpr int64_t K = RV::size();
  static_assert(K == 2 * V::size(), "a reduced-precision vector must widen to two float vectors");
  static inline void widen(const RV& r, V* v) {
    auto [lo, hi] = at::vec::convert_to_float<R>(r);
    v[0] = lo;
    v[1] = hi;
  }
  static inline void load(const R* p, V* v) { widen(RV::loadu(p), v); }
  static inline void load(const R* p, int64_t n, V* v) { widen(load_partial<RV>(p, n), v); }
  static inline void store(R* p, const V* v) { at::vec::convert_from_float<R>(v[0], v[1]).store(p); }
  static inline void store(R* p, int64_t n, const V* v) {
    store_partial(at::vec::convert_from_float<R>(v[0], v[1]), p, n);
  }
};
template <>
struct Io<c10::Half> : IoReduced<c10::Half> {};
template <>
struct Io<c10::BFloat16> : IoReduced<c10::BFloat16> {};

// Accumulator arrays (float or double) are read and written M vectors at a time, K elements.
template <typename V, int M, typename A>
inline void load_acc(const A* p, V* v) {
  for (int m = 0; m < M; ++m) v[m] = V::loadu(p + m * V::size());
}
template <typename V, int M, typename A>
inline void store_acc(A* p, const V* v) {
  for (int m = 0; m < M; ++m) v[m].store(p + m * V::size());
}

template <typename V>
inline typename V::value_type lanes_sum(const V& v) {  // fixed order: lane 0, 1, 2, ...
  alignas(64) typename V::value_type buf[V::size()];
  v.store(buf);
  typename V::value_type s = 0;
  for (int i = 0; i < V::size(); ++i) s += buf[i];
  return s;
}

// ---- the three operations, per vector step. p0/p1 are per-channel parameters (BN mean, scale). ----

struct ChannelOp {
  static constexpr int kAcc = 1;
  static constexpr bool kParams = false;
  template <typename V>
  inline void apply(const V& a, const V& b, const V&, const V&, V* acc, V&) const {
    acc[0] = at::vec::fmadd(a, b, acc[0]);
  }
};

struct BatchNormOp {
  static constexpr int kAcc = 2;
  static constexpr bool kParams = true;
  template <typename V>
  inline void apply(const V& z, const V& dy, const V& mean, const V& scale, V* acc, V& dz) const {
    acc[0] = at::vec::fmadd(z - mean, dy, acc[0]);
    acc[1] = acc[1] + dy;
    dz = dy * scale;
  }
};

template <bool kUpper>
struct ReluOp {
  static constexpr int kAcc = 1;
  static constexpr bool kParams = false;
  double upper = 0;
  template <typename V>
  inline void apply(const V& r, const V& dr, const V&, const V&, V* acc, V& dx) const {
    const V zero(0);
    V mask = r > zero;
    if constexpr (kUpper) mask = mask & (r < V(static_cast<typename V::value_type>(upper)));
    dx = V::blendv(zero, dr, mask);
    acc[0] = at::vec::fmadd(r, dx, acc[0]);
  }
};

// Per-channel parameter pointers for one call (null for ops without parameters).
template <typename A>
struct Params {
  const A* mean = nullptr;
  const A* scale = nullptr;
  const A* shift = nullptr;
};

template <typename A>
inline A epilogue(const BatchNormOp&, const Params<A>& pr, int64_t c, const A* acc) {
  return pr.scale[c] * acc[0] + pr.shift[c] * acc[1];
}
template <typename Op, typename A>
inline A epilogue(const Op&, const Params<A>&, int64_t, const A* acc) {
  return acc[0];
}

// ---- channels-first [N, C, P]: one item per (n, c) row, positions contiguous ----

template <typename T, typename Op>
void run_channels_first(const Geometry& g, const Op& op, const Params<typename Io<T>::acc_t>& pr, const T* a,
                        const T* b, T* out, typename Io<T>::acc_t* s, int64_t begin, int64_t end) {
  using IO = Io<T>;
  using A = typename IO::acc_t;
  using V = typename IO::V;
  constexpr int M = IO::M, U = 4, NA = Op::kAcc;
  constexpr int64_t K = IO::K;
  const int64_t P = g.P;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t n = item / g.C, c = item % g.C;
    const T* pa = a + n * g.a_n + c * g.a_c;
    const T* pb = b + n * g.b_n + c * g.b_c;
    T* po = out ? out + n * g.o_n + c * g.o_c : nullptr;
    const V p0(Op::kParams ? pr.mean[c] : A(0)), p1(Op::kParams ? pr.scale[c] : A(0));
    V acc[U][NA][M];
    for (int u = 0; u < U; ++u)
      for (int f = 0; f < NA; ++f)
        for (int m = 0; m < M; ++m) acc[u][f][m] = V(A(0));
    V va[M], vb[M], vo[M];
    auto step = [&](int u, int64_t i) {
      IO::load(pa + i, va);
      IO::load(pb + i, vb);
      for (int m = 0; m < M; ++m) {
        V acc_m[NA];
        for (int f = 0; f < NA; ++f) acc_m[f] = acc[u][f][m];
        op.apply(va[m], vb[m], p0, p1, acc_m, vo[m]);
        for (int f = 0; f < NA; ++f) acc[u][f][m] = acc_m[f];
      }
      if (po) IO::store(po + i, vo);
    };
    int64_t i = 0;
    for (; i + U * K <= P; i += U * K)
      for (int u = 0; u < U; ++u) step(u, i + u * K);
    for (; i + K <= P; i += K) step(0, i);
    if (i < P) {
      const int64_t rest = P - i;
      IO::load(pa + i, rest, va);
      IO::load(pb + i, rest, vb);
      for (int m = 0; m < M; ++m) {
        V acc_m[NA];
        for (int f = 0; f < NA; ++f) acc_m[f] = acc[1][f][m];
        op.apply(va[m], vb[m], p0, p1, acc_m, vo[m]);
        for (int f = 0; f < NA; ++f) acc[1][f][m] = acc_m[f];
      }
      if (po) IO::store(po + i, rest, vo);
    }
    A total[NA];
    for (int f = 0; f < NA; ++f) {
      V t = (acc[0][f][0] + acc[1][f][0]) + (acc[2][f][0] + acc[3][f][0]);
      for (int m = 1; m < M; ++m) t = t + ((acc[0][f][m] + acc[1][f][m]) + (acc[2][f][m] + acc[3][f][m]));
      total[f] = lanes_sum(t);
    }
    s[n * g.C + c] = epilogue(op, pr, c, total);
  }
}

// ---- channels-last [N, P, C]: one item per (n, block of channels), channels contiguous ----

constexpr int64_t kChunk = 128;  // positions per chunk of the two-level sum

template <typename T, typename Op>
void run_channels_last(const Geometry& g, const Op& op, const Params<typename Io<T>::acc_t>& pr, const T* a,
                       const T* b, T* out, typename Io<T>::acc_t* s, int64_t begin, int64_t end) {
  using IO = Io<T>;
  using A = typename IO::acc_t;
  using V = typename IO::V;
  constexpr int M = IO::M, NA = Op::kAcc;
  constexpr int64_t K = IO::K;
  const int64_t blocks = (g.C + g.cblock - 1) / g.cblock;
  alignas(64) A total[NA][kMaxChannelBlock + 64];
  alignas(64) A part[NA][kMaxChannelBlock + 64];
  alignas(64) A param[2][kMaxChannelBlock + 64];  // mean, scale of the block, zero-padded
  for (int64_t item = begin; item < end; ++item) {
    const int64_t n = item / blocks, c0 = (item % blocks) * g.cblock;
    const int64_t cb = std::min(g.cblock, g.C - c0);
    const int64_t cb_pad = (cb + K - 1) / K * K;
    for (int f = 0; f < NA; ++f) std::fill(total[f], total[f] + cb_pad, A(0));
    if constexpr (Op::kParams) {
      for (int k = 0; k < 2; ++k) {
        const A* src = k == 0 ? pr.mean : pr.scale;
        std::copy(src + c0, src + c0 + cb, param[k]);
        std::fill(param[k] + cb, param[k] + cb_pad, A(0));
      }
    }
    for (int64_t q0 = 0; q0 < g.P; q0 += kChunk) {
      const int64_t q1 = std::min(g.P, q0 + kChunk);
      for (int f = 0; f < NA; ++f) std::fill(part[f], part[f] + cb_pad, A(0));
      for (int64_t p = q0; p < q1; ++p) {
        const T* pa = a + n * g.a_n + p * g.a_p + c0;
        const T* pb = b + n * g.b_n + p * g.b_p + c0;
        T* po = out ? out + n * g.o_n + p * g.o_p + c0 : nullptr;
        V va[M], vb[M], vo[M], p0[M], p1[M], acc[NA][M];
        if constexpr (!Op::kParams)
          for (int m = 0; m < M; ++m) p0[m] = p1[m] = V(A(0));
        for (int64_t j = 0; j < cb; j += K) {
          const int64_t cnt = std::min(K, cb - j);
          if (cnt == K) {
            IO::load(pa + j, va);
            IO::load(pb + j, vb);
          } else {
            IO::load(pa + j, cnt, va);
            IO::load(pb + j, cnt, vb);
          }
          if constexpr (Op::kParams) {
            load_acc<V, M>(param[0] + j, p0);
            load_acc<V, M>(param[1] + j, p1);
          }
          for (int f = 0; f < NA; ++f) load_acc<V, M>(part[f] + j, acc[f]);
          for (int m = 0; m < M; ++m) {
            V acc_m[NA];
            for (int f = 0; f < NA; ++f) acc_m[f] = acc[f][m];
            op.apply(va[m], vb[m], p0[m], p1[m], acc_m, vo[m]);
            for (int f = 0; f < NA; ++f) acc[f][m] = acc_m[f];
          }
          for (int f = 0; f < NA; ++f) store_acc<V, M>(part[f] + j, acc[f]);
          if (po) {
            if (cnt == K)
              IO::store(po + j, vo);
            else
              IO::store(po + j, cnt, vo);
          }
        }
      }
      for (int f = 0; f < NA; ++f)
        for (int64_t j = 0; j < cb_pad; j += V::size()) (V::loadu(total[f] + j) + V::loadu(part[f] + j)).store(total[f] + j);
    }
    for (int64_t j = 0; j < cb; ++j) {
      A acc[NA];
      for (int f = 0; f < NA; ++f) acc[f] = total[f][j];
      s[n * g.C + c0 + j] = epilogue(op, pr, c0 + j, acc);
    }
  }
}

// ---- type-erased entry points for the table ----

template <typename T, bool kLast, typename Op>
inline void run(const Geometry& g, const Op& op, const Params<typename Io<T>::acc_t>& pr, const void* a,
                const void* b, void* out, void* s, int64_t begin, int64_t end) {
  using A = typename Io<T>::acc_t;
  auto* sa = static_cast<A*>(s);
  auto* ta = static_cast<const T*>(a);
  auto* tb = static_cast<const T*>(b);
  auto* to = static_cast<T*>(out);
  if constexpr (kLast)
    run_channels_last<T>(g, op, pr, ta, tb, to, sa, begin, end);
  else
    run_channels_first<T>(g, op, pr, ta, tb, to, sa, begin, end);
}

template <typename T, bool kLast>
void channel_entry(const Geometry& g, const void* a, const void* b, void* s, int64_t begin, int64_t end) {
  run<T, kLast>(g, ChannelOp{}, {}, a, b, nullptr, s, begin, end);
}

template <typename T, bool kLast>
void batchnorm_entry(const Geometry& g, const void* z, const void* dy, const void* mean, const void* scale,
                     const void* shift, void* dz, void* s, int64_t begin, int64_t end) {
  using A = typename Io<T>::acc_t;
  Params<A> pr{static_cast<const A*>(mean), static_cast<const A*>(scale), static_cast<const A*>(shift)};
  run<T, kLast>(g, BatchNormOp{}, pr, z, dy, dz, s, begin, end);
}

template <typename T, bool kLast>
void relu_entry(const Geometry& g, const void* r, const void* dr, bool has_upper, double upper, void* dx, void* s,
                int64_t begin, int64_t end) {
  if (has_upper)
    run<T, kLast>(g, ReluOp<true>{upper}, {}, r, dr, dx, s, begin, end);
  else
    run<T, kLast>(g, ReluOp<false>{}, {}, r, dr, dx, s, begin, end);
}

#define RGP_BY_DTYPE(fn, last) {fn<float, last>, fn<double, last>, fn<c10::Half, last>, fn<c10::BFloat16, last>}

inline const KernelTable* table() {
  static const KernelTable t{
      RGP_STR(CPU_CAPABILITY),
      {RGP_BY_DTYPE(channel_entry, false), RGP_BY_DTYPE(channel_entry, true)},
      {RGP_BY_DTYPE(batchnorm_entry, false), RGP_BY_DTYPE(batchnorm_entry, true)},
      {RGP_BY_DTYPE(relu_entry, false), RGP_BY_DTYPE(relu_entry, true)},
  };
  return &t;
}

#undef RGP_BY_DTYPE

}  // namespace rgprune_fast::cpu::CPU_CAPABILITY
