// Runs the CUDA kernels of stats_cuda.cu (rgprune_fast/backends/extension/csrc) under the CPU
// emulation (emu.h) against a float64 reference: both layouts, padded strides, every dtype and op,
// with and without outputs, split and unsplit reductions, and the same data through the
// 16-byte-load and the element-wise paths, which must agree bit for bit; and (check_widths) the
// same data laid out so that rows are 16-, 8-, 4- and 2-byte aligned (or the pointers 8- or 4-byte
// aligned), which the kernels read in 16-, 8- or 4-byte pieces or element by element: again bit for
// bit the same. Prints one line per failure and a summary; exit status 1 on any failure.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "stats_cuda.h"

using namespace rgprune_fast::cuda;

namespace {

int failures = 0, checks = 0;

void fail(const std::string& what) {
  ++failures;
  std::printf("FAIL %s\n", what.c_str());
}

template <typename T>
struct Type;
template <>
struct Type<float> {
  using acc = float;
  static float to(float v) { return v; }
  static float from(float v) { return v; }
  static constexpr DType d = kF32;
  static constexpr const char* name = "f32";
};
template <>
struct Type<double> {
  using acc = double;
  static double to(double v) { return v; }
  static double from(double v) { return v; }
  static constexpr DType d = kF64;
  static constexpr const char* name = "f64";
};
template <>
struct Type<__half> {
  using acc = float;
  static float to(__half v) { return __half2float(v); }
  static __half from(float v) { return __float2half_rn(v); }
  static constexpr DType d = kF16;
  static constexpr const char* name = "f16";
};
template <>
struct Type<__nv_bfloat16> {
  using acc = float;
  static float to(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
  static constexpr DType d = kBF16;
  static constexpr const char* name = "bf16";
};

// A 16-byte aligned buffer; `shift` elements are skipped to misalign it on purpose.
template <typename T>
struct Buffer {
  Buffer(size_t n, int shift) : raw(static_cast<T*>(std::aligned_alloc(64, ((n + 8) * sizeof(T) + 63) / 64 * 64))) {
    std::memset(static_cast<void*>(raw), 0xFF, (n + 8) * sizeof(T));  // NaN poison around the data
    data = raw + shift;
  }
  ~Buffer() { std::free(raw); }
  T* raw;
  T* data;
};

struct Case {
  int64_t N, C, P;
  bool last;
};

struct Layout {
  int64_t sn, sc, sp, size;
};

Layout layout_of(const Case& k, int pad) {
  Layout l;
  if (!k.last) {
    l.sp = 1;
    l.sc = k.P + pad;
    l.sn = k.C * l.sc + pad;
  } else {
    l.sc = 1;
    l.sp = k.C + pad;
    l.sn = k.P * l.sp + pad;
  }
  l.size = k.N * l.sn;
  return l;
}

template <typename T>
struct Result {
  std::vector<typename Type<T>::acc> s;
  std::vector<T> out;
};

// Rows (and examples) starting exactly `align` bytes aligned (16, 8, 4 or 2; not below the element
// size): row strides a multiple of 16 bytes plus `align` bytes (none for 16).
template <typename T>
Layout layout_aligned(const Case& k, int align) {
  const int64_t V = 16 / sizeof(T), extra = align % 16 / static_cast<int64_t>(sizeof(T));
  const auto stride = [&](int64_t len) { return (len + V - 1) / V * V + extra; };
  Layout l;
  if (!k.last) {
    l.sp = 1;
    l.sc = stride(k.P);
    l.sn = stride(k.C * l.sc);
  } else {
    l.sc = 1;
    l.sp = stride(k.C);
    l.sn = stride(k.P * l.sp);
  }
  l.size = k.N * l.sn;
  return l;
}

// op: 0 channel, 1 batchnorm, 2 relu, 3 relu6
template <typename T>
Result<T> run(const Case& k, int op, bool want_out, int pad, int shift, const std::vector<double>& av,
              const std::vector<double>& bv, const std::vector<typename Type<T>::acc>& params);

// The same on layout `l`, the data `shift` elements past a 64-byte boundary.
template <typename T>
Result<T> run_on(const Case& k, const Layout& l, int op, bool want_out, int shift, const std::vector<double>& av,
                 const std::vector<double>& bv, const std::vector<typename Type<T>::acc>& params) {
  using A = typename Type<T>::acc;
  Buffer<T> a(l.size, shift), b(l.size, shift), o(l.size, shift);
  for (int64_t n = 0; n < k.N; ++n)
    for (int64_t c = 0; c < k.C; ++c)
      for (int64_t p = 0; p < k.P; ++p) {
        const int64_t i = (n * k.C + c) * k.P + p, at = n * l.sn + c * l.sc + p * l.sp;
        a.data[at] = Type<T>::from(static_cast<A>(av[i]));
        b.data[at] = Type<T>::from(static_cast<A>(bv[i]));
      }
  Geometry g;
  g.N = k.N, g.C = k.C, g.P = k.P, g.channels_last = k.last;
  g.a_n = g.b_n = g.o_n = l.sn;
  g.a_c = g.b_c = g.o_c = l.sc;
  g.a_p = g.b_p = g.o_p = l.sp;
  const OpKind kind = op == 0 ? kChannel : op == 1 ? kBatchNorm : kRelu;
  Result<T> r;
  r.s.assign(k.N * k.C, A(-7));
  std::vector<unsigned char> ws(workspace_bytes(g, Type<T>::d, kind) + 16);
  Args args;
  args.a = a.data;
  args.b = b.data;
  args.out = want_out ? o.data : nullptr;
  args.mean = params.data();
  args.scale = params.data() + k.C;
  args.shift = params.data() + 2 * k.C;
  args.has_upper = op == 3;
  args.upper = 6.0;
  args.s = r.s.data();
  args.workspace = ws.data();
  if (launch(g, Type<T>::d, kind, args, nullptr) != cudaSuccess) fail("launch");
  if (want_out) {
    r.out.resize(k.N * k.C * k.P);
    for (int64_t n = 0; n < k.N; ++n)
      for (int64_t c = 0; c < k.C; ++c)
        for (int64_t p = 0; p < k.P; ++p) r.out[(n * k.C + c) * k.P + p] = o.data[n * l.sn + c * l.sc + p * l.sp];
  }
  return r;
}

template <typename T>
Result<T> run(const Case& k, int op, bool want_out, int pad, int shift, const std::vector<double>& av,
              const std::vector<double>& bv, const std::vector<typename Type<T>::acc>& params) {
  return run_on<T>(k, layout_of(k, pad), op, want_out, shift, av, bv, params);
}

template <typename T>
bool same_bits(const T& x, const T& y) {
  return std::memcmp(&x, &y, sizeof(T)) == 0;
}

template <typename T>
struct Data {
  std::vector<double> av, bv;
  std::vector<typename Type<T>::acc> params;
  std::string tag;
};

template <typename T>
Data<T> make_data(const Case& k, int op, bool want_out, std::mt19937& rng) {
  using A = typename Type<T>::acc;
  std::normal_distribution<double> normal(0.0, 1.0);
  const int64_t total = k.N * k.C * k.P;
  std::vector<double> av(total), bv(total);
  for (auto& v : av) v = normal(rng) * (op >= 2 ? 4.0 : 1.0) + (op == 1 ? 2.0 : 0.0);
  for (auto& v : bv) v = normal(rng);
  if (op >= 2) {  // ReLU / ReLU6 see their outputs: clamp, with exact zeros and sixes
    for (auto& v : av) v = std::min(std::max(v, 0.0), op == 3 ? 6.0 : 1e30);
  }
  std::vector<A> params(3 * k.C);
  for (auto& v : params) v = static_cast<A>(normal(rng));
  for (int64_t c = 0; c < k.C; ++c) params[c] += A(2);  // mean near the data

  const char* opname[] = {"channel", "batchnorm", "relu", "relu6"};
  char tag[256];
  std::snprintf(tag, sizeof tag, "%s %s N=%lld C=%lld P=%lld %s out=%d", Type<T>::name, opname[op],
                static_cast<long long>(k.N), static_cast<long long>(k.C), static_cast<long long>(k.P),
                k.last ? "channels_last" : "channels_first", want_out ? 1 : 0);
  return {std::move(av), std::move(bv), std::move(params), tag};
}

// `vec` (any path) against a float64 reference from the values as stored in T.
template <typename T>
void check_reference(const Case& k, int op, bool want_out, const Data<T>& d, const Result<T>& vec) {
  using A = typename Type<T>::acc;
  const std::vector<double>& av = d.av;
  const std::vector<double>& bv = d.bv;
  const std::vector<A>& params = d.params;
  const char* tag = d.tag.c_str();
  const double tol = Type<T>::d == kF64 ? 1e-12 : 1e-5;
  for (int64_t n = 0; n < k.N; ++n) {
    for (int64_t c = 0; c < k.C; ++c) {
      double sum0 = 0, sum1 = 0, mag = 0;
      for (int64_t p = 0; p < k.P; ++p) {
        const int64_t i = (n * k.C + c) * k.P + p;
        const A a = Type<T>::to(Type<T>::from(static_cast<A>(av[i])));
        const A b = Type<T>::to(Type<T>::from(static_cast<A>(bv[i])));
        T expect_out{};
        if (op == 0) {
          sum0 += double(a) * b;
          mag += std::fabs(double(a) * b);
        } else if (op == 1) {
          const double d = double(a) - params[c];
          sum0 += d * b;
          sum1 += b;
          mag += std::fabs(double(params[k.C + c]) * d * b) + std::fabs(double(params[2 * k.C + c]) * b);
          expect_out = Type<T>::from(b * params[k.C + c]);
        } else {
          const bool on = a > A(0) && (op == 2 || a < A(6));
          const A dx = on ? b : A(0);
          sum0 += double(a) * dx;
          mag += std::fabs(double(a) * dx);
          expect_out = Type<T>::from(dx);
        }
        if (want_out && !same_bits(vec.out[i], expect_out)) {
          fail(std::string(tag) + ": output element differs from the reference");
          n = k.N, c = k.C;
          break;
        }
      }
      if (n >= k.N) break;
      const double ref = op == 1 ? double(params[k.C + c]) * sum0 + double(params[2 * k.C + c]) * sum1 : sum0;
      const double got = vec.s[n * k.C + c];
      if (!(std::fabs(got - ref) <= tol * mag + 1e-30)) {
        char msg[128];
        std::snprintf(msg, sizeof msg, ": s[%lld, %lld] = %.9g, reference %.9g", static_cast<long long>(n),
                      static_cast<long long>(c), got, ref);
        fail(std::string(tag) + msg);
        n = k.N;
        break;
      }
    }
  }
}

template <typename T>
void check_case(const Case& k, int op, bool want_out, std::mt19937& rng) {
  const Data<T> d = make_data<T>(k, op, want_out, rng);
  const std::string& tag = d.tag;
  const Result<T> vec = run<T>(k, op, want_out, 0, 0, d.av, d.bv, d.params);   // aligned: 16-byte loads
  // misaligned by one element: element-wise for 2-byte types, in 4- or 8-byte pieces for float, double
  const Result<T> scal = run<T>(k, op, want_out, 1, 1, d.av, d.bv, d.params);
  const Result<T> again = run<T>(k, op, want_out, 0, 0, d.av, d.bv, d.params);  // determinism
  ++checks;
  for (size_t i = 0; i < vec.s.size(); ++i) {
    if (!same_bits(vec.s[i], scal.s[i]) || !same_bits(vec.s[i], again.s[i])) {
      fail(tag + ": vector and element-wise paths (or two runs) differ in bits");
      break;
    }
  }
  if (want_out && std::memcmp(vec.out.data(), scal.out.data(), vec.out.size() * sizeof(T)) != 0)
    fail(tag + ": outputs of the two paths differ");
  check_reference<T>(k, op, want_out, d, vec);
}

// The same data with rows 16-, 8-, 4- and 2-byte aligned (those not below the element size), and with
// 16-byte strides but the pointers only 8- or 4-byte aligned: 16-byte accesses, 8- or 4-byte pieces,
// element by element. Every result must have the bits of the 16-byte one, which must match the reference.
template <typename T>
void check_widths(const Case& k, int op, bool want_out, std::mt19937& rng) {
  const Data<T> d = make_data<T>(k, op, want_out, rng);
  const int es = static_cast<int>(sizeof(T));
  const Result<T> wide = run_on<T>(k, layout_aligned<T>(k, 16), op, want_out, 0, d.av, d.bv, d.params);
  check_reference<T>(k, op, want_out, d, wide);
  struct Variant {
    int rows, shift_bytes;
  };
  const Variant variants[] = {{8, 0}, {4, 0}, {2, 0}, {16, 8}, {16, 4}};
  for (const Variant& v : variants) {
    if (v.rows < es || (v.shift_bytes && v.shift_bytes < es)) continue;
    ++checks;
    const Layout l = layout_aligned<T>(k, v.rows);
    const Result<T> r = run_on<T>(k, l, op, want_out, v.shift_bytes / es, d.av, d.bv, d.params);
    char what[96];
    std::snprintf(what, sizeof what, ": rows %d-byte, pointers %d-byte aligned", v.rows,
                  v.shift_bytes ? v.shift_bytes : 64);
    if (std::memcmp(r.s.data(), wide.s.data(), r.s.size() * sizeof(r.s[0])) != 0)
      fail(d.tag + what + ": sums differ in bits from the 16-byte path");
    if (want_out && std::memcmp(r.out.data(), wide.out.data(), r.out.size() * sizeof(T)) != 0)
      fail(d.tag + what + ": outputs differ from the 16-byte path");
  }
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  // {N, C, P, channels_last}. Channels-first: groups of 8, 32 (split) and 256 (split) threads per
  // row; channels-last: narrow and wide channel tiles, with and without splits; single elements.
  const Case cases[] = {
      {2, 5, 7, false}, {3, 4, 100, false}, {1, 2, 2000, false}, {1, 1, 20000, false}, {2, 20, 1, false},
      {5, 1, 33, false}, {1, 1, 1, false},  {2, 7, 5, true},      {3, 300, 40, true},  {1, 2100, 3, true},
      {4, 1, 600, true}, {2, 600, 130, true}, {1, 3, 5000, true}, {1, 1, 1, true},
  };
  for (const Case& k : cases) {
    for (int op = 0; op < 4; ++op) {
      for (int want_out = 0; want_out < 2; ++want_out) {
        if (op == 0 && want_out) continue;
        check_case<float>(k, op, want_out, rng);
        check_case<double>(k, op, want_out, rng);
        check_case<__half>(k, op, want_out, rng);
        check_case<__nv_bfloat16>(k, op, want_out, rng);
      }
    }
  }
  // Rows 8- and 4-byte aligned but not 16 (14 x 14 and 7 x 7 maps in NCHW, C = 100 channels-last), in
  // groups of 8 and 32 threads, split and not, partial packs, a channel dim of size 1 (its stride unused).
  const Case width_cases[] = {
      {3, 4, 196, false}, {2, 3, 49, false}, {2, 5, 13, false}, {1, 2, 3000, false}, {2, 1, 40, false},
      {2, 100, 49, true}, {3, 36, 40, true}, {1, 20, 900, true}, {2, 3, 30, true},
  };
  for (const Case& k : width_cases) {
    for (int op = 0; op < 4; ++op) {
      for (int want_out = 0; want_out < 2; ++want_out) {
        if (op == 0 && want_out) continue;
        check_widths<float>(k, op, want_out, rng);
        check_widths<double>(k, op, want_out, rng);
        check_widths<__half>(k, op, want_out, rng);
        check_widths<__nv_bfloat16>(k, op, want_out, rng);
      }
    }
  }
  std::printf("%d cases checked, %d failures\n", checks, failures);
  return failures ? 1 : 0;
}
