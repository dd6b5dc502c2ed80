// CUDA kernels for the reduction ops (csrc/stats_cuda.h for the interface, stats_cuda_glue.cpp for
// the torch side). Only CUDA headers here, so `nvcc -c` checks this file without a CUDA build of torch.
//
// Numerics follow backends/torch_ref.py: inputs widened to float (double for double), accumulated
// there, outputs (dz, dx) rounded once to the input dtype. Every reduction has a fixed order that
// depends on the shape only (not on alignment, device or scheduling), and no atomics are used:
//   channels-first [N, C, P]: a group of G threads per (n, c) row (G = 8, 32 or 256 by row length);
//     lane l takes the 16-byte packs l, l + G, l + 2G, ... of its split of the row, element by element;
//     lanes are combined by a fixed butterfly (and, for G = 256, warps in order).
//   channels-last [N, P, C]: a thread owns V consecutive channels (one 16-byte pack) and the positions
//     py, py + PY, ... of its split; the PY partial sums of a channel are added in order of py.
//   Long reductions are split over blocks along the positions; the partial sums of the splits go to a
//   workspace and a second kernel adds them in split order (and applies the BatchNorm epilogue).
// A whole pack is read (and written) with 16-byte accesses when every row starts 16-byte aligned, else
// with 8- or 4-byte pieces when rows are that aligned, else element by element; a partial pack (the end
// of a row, C or P shorter than a pack) element by element. The arithmetic is the same on every path, in
// the same order: alignment changes the speed only, never the result.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "stats_cuda.h"

namespace rgprune_fast::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kTargetBlocks = 1024;  // split reductions until about this many blocks (any GPU)

// ---- element types ----

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ double widen(double v) { return v; }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T narrow(typename Acc<T>::type v);
template <>
__device__ __forceinline__ float narrow<float>(float v) { return v; }
template <>
__device__ __forceinline__ double narrow<double>(double v) { return v; }
template <>
__device__ __forceinline__ __half narrow<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

// A whole pack moved as one 16-byte access or as 8- or 4-byte pieces, at addresses aligned to the piece:
// `width` is chosen once per launch by load_width (never below the element size). The pack holds the same
// 16 bytes whichever the width. (Of the ways of writing this tried, this one needs the fewest registers;
// benchmarks/aot_cuda.py reports them.)
template <int W>
struct alignas(W) Piece {
  uint32_t w[W / 4];
};

template <typename T>
__device__ __forceinline__ Pack<T> load_pack(const T* src, int width) {
  Pack<T> r;
  uint32_t* w = reinterpret_cast<uint32_t*>(r.v);
  if (width == 16) {
    const Piece<16> x = *reinterpret_cast<const Piece<16>*>(src);
    w[0] = x.w[0], w[1] = x.w[1], w[2] = x.w[2], w[3] = x.w[3];
  } else if (sizeof(T) > 4 || width == 8) {
    const Piece<8> x = reinterpret_cast<const Piece<8>*>(src)[0], y = reinterpret_cast<const Piece<8>*>(src)[1];
    w[0] = x.w[0], w[1] = x.w[1], w[2] = y.w[0], w[3] = y.w[1];
  } else {
    const uint32_t* q = reinterpret_cast<const uint32_t*>(src);
    w[0] = q[0], w[1] = q[1], w[2] = q[2], w[3] = q[3];
  }
  return r;
}

template <int W, typename T>
__device__ __forceinline__ void store_pieces(T* dst, const Pack<T>& r) {
#pragma unroll
  for (int k = 0; k < 16 / W; ++k) reinterpret_cast<Piece<W>*>(dst)[k] = reinterpret_cast<const Piece<W>*>(r.v)[k];
}

template <typename T>
__device__ __forceinline__ void store_pack(T* dst, const Pack<T>& r, int width) {
  if constexpr (sizeof(T) <= 4) {
    if (width == 4) return store_pieces<4>(dst, r);
  }
  if (width == 8)
    store_pieces<8>(dst, r);
  else
    store_pieces<16>(dst, r);
}

// ---- operations (per element) and the pointers they use ----

template <typename T>
struct Ptrs {
  using A = typename Acc<T>::type;
  const T* __restrict__ a;
  const T* __restrict__ b;
  T* __restrict__ out;
  const A* __restrict__ mean;
  const A* __restrict__ scale;
  const A* __restrict__ shift;
  A* __restrict__ s;
  A* __restrict__ ws;
};

struct ChannelOp {
  static constexpr int kAcc = 1;
  static constexpr bool kParams = false;
  template <typename A>
  __device__ __forceinline__ A apply(A a, A b, A, A, A* acc) const {
    acc[0] = fma(a, b, acc[0]);
    return A(0);
  }
};

struct BatchNormOp {
  static constexpr int kAcc = 2;
  static constexpr bool kParams = true;
  template <typename A>
  __device__ __forceinline__ A apply(A z, A dy, A mean, A scale, A* acc) const {
    acc[0] = fma(z - mean, dy, acc[0]);
    acc[1] += dy;
    return dy * scale;
  }
};

template <bool kUpper>
struct ReluOp {
  static constexpr int kAcc = 1;
  static constexpr bool kParams = false;
  double upper;
  template <typename A>
  __device__ __forceinline__ A apply(A r, A dr, A, A, A* acc) const {
    const bool on = r > A(0) && (!kUpper || r < static_cast<A>(upper));
    const A dx = on ? dr : A(0);
    acc[0] = fma(r, dx, acc[0]);
    return dx;
  }
};

template <typename Op, typename A>
__device__ __forceinline__ A epilogue(const A* acc, const A* scale, const A* shift, int64_t c) {
  if constexpr (Op::kAcc == 2)
    return scale[c] * acc[0] + shift[c] * acc[1];
  else
    return acc[0];
}

// One pack of V elements at a, b (-> out), positions [0, valid); `width`-byte pieces when whole (and
// width != 0), else element by element.
template <typename T, typename Op, typename A = typename Acc<T>::type>
__device__ __forceinline__ void do_pack(const Op& op, const T* a, const T* b, T* out, int64_t out_step,
                                        int64_t in_step_a, int64_t in_step_b, int valid, int width, A mean,
                                        A scale, A* acc) {
  constexpr int V = Pack<T>::kSize;
  if (width && valid == V) {
    const Pack<T> pa = load_pack(a, width);
    const Pack<T> pb = load_pack(b, width);
    Pack<T> po;
#pragma unroll
    for (int e = 0; e < V; ++e) po.v[e] = narrow<T>(op.apply(widen(pa.v[e]), widen(pb.v[e]), mean, scale, acc));
    if (out) store_pack(out, po, width);
  } else {
    for (int e = 0; e < valid; ++e) {
      const A o = op.apply(widen(a[e * in_step_a]), widen(b[e * in_step_b]), mean, scale, acc);
      if (out) out[e * out_step] = narrow<T>(o);
    }
  }
}

// ---- channels-first: G threads per row ----

template <typename T, typename Op, int G>
__global__ void __launch_bounds__(kThreads)
    channels_first_kernel(Geometry g, Op op, Ptrs<T> p, int64_t chunk, int64_t splits, int width) {
  using A = typename Acc<T>::type;
  constexpr int V = Pack<T>::kSize;
  constexpr int NA = Op::kAcc;
  constexpr int kRows = kThreads / G;
  const int lane = threadIdx.x % G;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRows + threadIdx.x / G;
  const int64_t split = blockIdx.y;
  const bool active = row < g.N * g.C;
  A acc[NA];
#pragma unroll
  for (int f = 0; f < NA; ++f) acc[f] = A(0);
  int64_t n = 0, c = 0;
  if (active) {
    n = row / g.C;
    c = row % g.C;
    const T* pa = p.a + n * g.a_n + c * g.a_c;
    const T* pb = p.b + n * g.b_n + c * g.b_c;
    T* po = p.out ? p.out + n * g.o_n + c * g.o_c : nullptr;
    const A mean = Op::kParams ? p.mean[c] : A(0), scale = Op::kParams ? p.scale[c] : A(0);
    const int64_t begin = split * chunk, end = min64(g.P, begin + chunk);
    for (int64_t i = begin + static_cast<int64_t>(lane) * V; i < end; i += static_cast<int64_t>(G) * V) {
      const int valid = static_cast<int>(min64(V, end - i));
      do_pack<T>(op, pa + i, pb + i, po ? po + i : nullptr, 1, 1, 1, valid, width, mean, scale, acc);
    }
  }
  // Combine the G lanes of a row: butterfly within the warp (every lane ends with the same sum).
#pragma unroll
  for (int f = 0; f < NA; ++f)
#pragma unroll
    for (int off = (G < 32 ? G : 32) / 2; off > 0; off /= 2) acc[f] += __shfl_xor_sync(0xffffffffu, acc[f], off);
  if constexpr (G > 32) {
    __shared__ A warp_sums[kThreads / 32][NA];
    const int warp = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0)
#pragma unroll
      for (int f = 0; f < NA; ++f) warp_sums[warp][f] = acc[f];
    __syncthreads();
    if (threadIdx.x == 0)
#pragma unroll
      for (int f = 0; f < NA; ++f) {
        A t = warp_sums[0][f];
        for (int w = 1; w < G / 32; ++w) t += warp_sums[w][f];
        acc[f] = t;
      }
  }
  if (!active || lane != 0) return;
  if (splits == 1) {
    p.s[row] = epilogue<Op>(acc, p.scale, p.shift, c);
  } else {
#pragma unroll
    for (int f = 0; f < NA; ++f) p.ws[(row * splits + split) * NA + f] = acc[f];
  }
}

// ---- channels-last: CX threads across channels (V each) x PY threads across positions ----

template <typename T, typename Op>
__global__ void __launch_bounds__(kThreads)
    channels_last_kernel(Geometry g, Op op, Ptrs<T> p, int cx_count, int py_count, int64_t tiles, int64_t chunk,
                         int64_t splits, int width) {
  using A = typename Acc<T>::type;
  constexpr int V = Pack<T>::kSize;
  constexpr int NA = Op::kAcc;
  extern __shared__ unsigned char smem_raw[];
  A* smem = reinterpret_cast<A*>(smem_raw);  // [py_count][cx_count][V][NA]
  const int cx = threadIdx.x % cx_count, py = threadIdx.x / cx_count;
  const int64_t n = blockIdx.x / tiles;
  const int64_t c0 = (blockIdx.x % tiles) * cx_count * V + static_cast<int64_t>(cx) * V;
  const int64_t split = blockIdx.y;
  const int valid = static_cast<int>(max64(0, min64(V, g.C - c0)));
  A acc[V][NA];
#pragma unroll
  for (int e = 0; e < V; ++e)
#pragma unroll
    for (int f = 0; f < NA; ++f) acc[e][f] = A(0);
  if (valid > 0) {
    A mean[V], scale[V];
#pragma unroll
    for (int e = 0; e < V; ++e) {
      mean[e] = Op::kParams && e < valid ? p.mean[c0 + e] : A(0);
      scale[e] = Op::kParams && e < valid ? p.scale[c0 + e] : A(0);
    }
    const int64_t begin = split * chunk, end = min64(g.P, begin + chunk);
    const T* pa = p.a + n * g.a_n + c0;
    const T* pb = p.b + n * g.b_n + c0;
    T* po = p.out ? p.out + n * g.o_n + c0 : nullptr;
    for (int64_t q = begin + py; q < end; q += py_count) {
      const T* ra = pa + q * g.a_p;
      const T* rb = pb + q * g.b_p;
      T* ro = po ? po + q * g.o_p : nullptr;
      if (width && valid == V) {
        const Pack<T> va = load_pack(ra, width);
        const Pack<T> vb = load_pack(rb, width);
        Pack<T> vo;
#pragma unroll
        for (int e = 0; e < V; ++e) vo.v[e] = narrow<T>(op.apply(widen(va.v[e]), widen(vb.v[e]), mean[e], scale[e], acc[e]));
        if (ro) store_pack(ro, vo, width);
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) {
          if (e < valid) {
            const A o = op.apply(widen(ra[e]), widen(rb[e]), mean[e], scale[e], acc[e]);
            if (ro) ro[e] = narrow<T>(o);
          }
        }
      }
    }
  }
  // Partial sums of the py rows, added in order of py by the py == 0 thread of each column.
  const int stride = cx_count * V * NA;
#pragma unroll
  for (int e = 0; e < V; ++e)
#pragma unroll
    for (int f = 0; f < NA; ++f) smem[py * stride + (cx * V + e) * NA + f] = acc[e][f];
  __syncthreads();
  if (py != 0 || valid == 0) return;
  for (int e = 0; e < valid; ++e) {
    A t[NA];
#pragma unroll
    for (int f = 0; f < NA; ++f) {
      t[f] = smem[(cx * V + e) * NA + f];
      for (int y = 1; y < py_count; ++y) t[f] += smem[y * stride + (cx * V + e) * NA + f];
    }
    const int64_t c = c0 + e;
    if (splits == 1) {
      p.s[n * g.C + c] = epilogue<Op>(t, p.scale, p.shift, c);
    } else {
#pragma unroll
      for (int f = 0; f < NA; ++f) p.ws[((n * splits + split) * g.C + c) * NA + f] = t[f];
    }
  }
}

// ---- second pass of split reductions: add the splits in order, apply the epilogue ----

template <typename Op, typename A>
__global__ void __launch_bounds__(kThreads)
    finalize_kernel(int64_t N, int64_t C, int64_t splits, bool channels_last, const A* __restrict__ ws,
                    const A* __restrict__ scale, const A* __restrict__ shift, A* __restrict__ s) {
  constexpr int NA = Op::kAcc;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= N * C) return;
  const int64_t n = idx / C, c = idx % C;
  const int64_t base = channels_last ? (n * splits * C + c) * NA : idx * splits * NA;
  const int64_t step = channels_last ? C * NA : NA;
  A t[NA];
#pragma unroll
  for (int f = 0; f < NA; ++f) {
    t[f] = ws[base + f];
    for (int64_t k = 1; k < splits; ++k) t[f] += ws[base + k * step + f];
  }
  s[idx] = epilogue<Op>(t, scale, shift, c);
}

// ---- launch configuration (a function of the shape and dtype only) ----

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
int pow2_at_least(int64_t v, int cap) {
  int p = 1;
  while (p < v && p < cap) p *= 2;
  return p;
}

struct Config {
  // channels-first
  int group = 32;
  // channels-last
  int cx = 1, py = 1;
  int64_t tiles = 1;
  // both
  int64_t chunk = 0, splits = 1, blocks = 1;
};

Config configure(const Geometry& g, int64_t V) {
  Config k;
  if (!g.channels_last) {
    const int64_t packs = cdiv(g.P, V);
    k.group = packs <= 16 ? 8 : packs <= 1024 ? 32 : 256;
    const int64_t row_blocks = cdiv(g.N * g.C, kThreads / k.group);
    const int64_t max_splits = std::max<int64_t>(1, packs / (4 * k.group));
    k.splits = std::clamp<int64_t>(cdiv(kTargetBlocks, row_blocks), 1, std::min<int64_t>(max_splits, 65535));
    k.chunk = cdiv(cdiv(g.P, k.splits), k.group * V) * k.group * V;
    k.splits = cdiv(g.P, k.chunk);
    k.blocks = row_blocks;
  } else {
    k.cx = pow2_at_least(cdiv(g.C, V), 32);
    k.py = pow2_at_least(g.P, kThreads / k.cx);
    k.tiles = cdiv(g.C, k.cx * V);
    const int64_t max_splits = std::max<int64_t>(1, g.P / (8 * k.py));
    k.splits = std::clamp<int64_t>(cdiv(kTargetBlocks, k.tiles * g.N), 1, std::min<int64_t>(max_splits, 65535));
    k.chunk = cdiv(cdiv(g.P, k.splits), k.py) * k.py;
    k.splits = cdiv(g.P, k.chunk);
    k.blocks = k.tiles * g.N;
  }
  return k;
}

int64_t elem_size(DType d) { return d == kF64 ? 8 : d == kF32 ? 4 : 2; }
int num_acc(OpKind op) { return op == kBatchNorm ? 2 : 1; }

// Bytes per access of a whole pack: the widest of 16, 8 and 4 (not below the element size) that the
// pointers and the strides (in bytes) of every tensor are multiples of, so that every row starts aligned
// (packs start at multiples of 16 bytes within a row); 0: element by element. Strides of dims of size 1
// are never used, so they do not count. (benchmarks/aot_cuda.py asks this and configure() how the
// benchmark shapes launch, through a host-only probe that includes this file: keep their signatures.)
int load_width(const Geometry& g, const Args& args, int64_t elem) {
  uintptr_t bits = reinterpret_cast<uintptr_t>(args.a) | reinterpret_cast<uintptr_t>(args.b) |
                   reinterpret_cast<uintptr_t>(args.out);
  const auto stride = [&](int64_t size, int64_t s) {
    if (size > 1) bits |= static_cast<uintptr_t>(s * elem);
  };
  const int64_t R = g.channels_last ? g.P : g.C;  // rows per example besides n
  stride(g.N, g.a_n), stride(g.N, g.b_n);
  stride(R, g.channels_last ? g.a_p : g.a_c), stride(R, g.channels_last ? g.b_p : g.b_c);
  if (args.out) stride(g.N, g.o_n), stride(R, g.channels_last ? g.o_p : g.o_c);
  for (int w = 16; w >= 4 && w >= elem; w /= 2)
    if (bits % w == 0) return w;
  return 0;
}

template <typename T, typename Op>
cudaError_t run(const Geometry& g, const Op& op, const Args& args, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  constexpr int V = Pack<T>::kSize;
  const Config k = configure(g, V);
  Ptrs<T> p{static_cast<const T*>(args.a),   static_cast<const T*>(args.b),     static_cast<T*>(args.out),
            static_cast<const A*>(args.mean), static_cast<const A*>(args.scale), static_cast<const A*>(args.shift),
            static_cast<A*>(args.s),          static_cast<A*>(args.workspace)};
  const int width = load_width(g, args, sizeof(T));
  const dim3 grid(static_cast<unsigned>(k.blocks), static_cast<unsigned>(k.splits));
  if (!g.channels_last) {
    if (k.group == 8)
      channels_first_kernel<T, Op, 8><<<grid, kThreads, 0, stream>>>(g, op, p, k.chunk, k.splits, width);
    else if (k.group == 32)
      channels_first_kernel<T, Op, 32><<<grid, kThreads, 0, stream>>>(g, op, p, k.chunk, k.splits, width);
    else
      channels_first_kernel<T, Op, 256><<<grid, kThreads, 0, stream>>>(g, op, p, k.chunk, k.splits, width);
  } else {
    const size_t smem = static_cast<size_t>(k.cx) * k.py * V * Op::kAcc * sizeof(A);
    channels_last_kernel<T, Op><<<grid, k.cx * k.py, smem, stream>>>(g, op, p, k.cx, k.py, k.tiles, k.chunk,
                                                                      k.splits, width);
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || k.splits == 1) return err;
  const int64_t outputs = g.N * g.C;
  finalize_kernel<Op, A><<<static_cast<unsigned>(cdiv(outputs, kThreads)), kThreads, 0, stream>>>(
      g.N, g.C, k.splits, g.channels_last, p.ws, p.scale, p.shift, p.s);
  return cudaGetLastError();
}

template <typename T>
cudaError_t run_op(const Geometry& g, OpKind op, const Args& args, cudaStream_t stream) {
  switch (op) {
    case kChannel:
      return run<T>(g, ChannelOp{}, args, stream);
    case kBatchNorm:
      return run<T>(g, BatchNormOp{}, args, stream);
    default:
      return args.has_upper ? run<T>(g, ReluOp<true>{args.upper}, args, stream)
                            : run<T>(g, ReluOp<false>{args.upper}, args, stream);
  }
}

}  // namespace

int64_t workspace_bytes(const Geometry& g, DType dtype, OpKind op) {
  const Config k = configure(g, 16 / elem_size(dtype));
  if (k.splits == 1) return 0;
  const int64_t acc_size = dtype == kF64 ? 8 : 4;
  return g.N * g.C * k.splits * num_acc(op) * acc_size;
}

cudaError_t launch(const Geometry& g, DType dtype, OpKind op, const Args& args, cudaStream_t stream) {
  switch (dtype) {
    case kF32:
      return run_op<float>(g, op, args, stream);
    case kF64:
      return run_op<double>(g, op, args, stream);
    case kF16:
      return run_op<__half>(g, op, args, stream);
    default:
      return run_op<__nv_bfloat16>(g, op, args, stream);
  }
}

}  // namespace rgprune_fast::cuda
