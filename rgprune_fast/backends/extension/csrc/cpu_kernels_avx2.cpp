// The CPU kernels for AVX2 + FMA, picked at run time when at::get_cpu_capability() reports AVX2 or
// AVX512 (so ATEN_CPU_CAPABILITY=default forces the baseline kernels, as it does for ATen's own).
//
// setuptools compiles every source of an extension with the same flags, so the ISA is selected per
// file with `#pragma GCC target` (GCC only; elsewhere this file provides no table). Two rules keep
// AVX2 instructions out of code that can run on older CPUs:
//   * every header whose inline functions could also be emitted by the baseline files is included
//     BEFORE the pragma, so only at::vec (namespace at::vec::AVX2) and our kernels (namespace
//     rgprune_fast::cpu::AVX2) are compiled for AVX2;
//   * this file is the last source of the extension, so for any inline function that is emitted
//     anyway, the linker keeps the first (baseline) copy.
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(_M_X64))
#define RGP_HAVE_AVX2_BUILD 1
#endif

#include "cpu_kernels.h"

#ifdef RGP_HAVE_AVX2_BUILD
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/complex.h>
#include <c10/util/irange.h>
#include <c10/util/Exception.h>
#include <c10/util/TypeCast.h>

#include <algorithm>
#include <array>
#include <bitset>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iostream>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
// GCC does not define the ISA macros for a target pragma; the vector headers (and sleef.h) test them.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "cpu_kernels_impl.h"
#pragma GCC pop_options

namespace rgprune_fast::cpu {
const KernelTable* kernels_avx2() { return AVX2::table(); }
}  // namespace rgprune_fast::cpu

#else
namespace rgprune_fast::cpu {
const KernelTable* kernels_avx2() { return nullptr; }
}  // namespace rgprune_fast::cpu
#endif
