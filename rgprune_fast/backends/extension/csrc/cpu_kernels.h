// CPU kernel table: what one ISA build of cpu_kernels_impl.h exports to the glue (stats_cpu.cpp).
//
// Header-light on purpose (no ATen vector headers): it is included both by the glue, compiled for the
// baseline ISA, and by the per-ISA kernel files.
//
// A call processes the work items [begin, end):
//   channels-first [N, C, P]: one item per (n, c) row, item = n * C + c;
//   channels-last  [N, P, C]: one item per (n, channel block), item = n * blocks + b, blocks of
//                             `cblock` channels (a multiple of 16, at most kMaxChannelBlock).
// Each (n, c) result is produced by exactly one item, in an order fixed by the shape alone, so the
// results do not depend on the number of threads or on how the glue splits the items.
#pragma once

#include <cstdint>

namespace rgprune_fast::cpu {

constexpr int64_t kMaxChannelBlock = 256;

// dtype index into the tables
enum DType : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3, kNumDTypes = 4 };

struct Geometry {
  int64_t N = 0, C = 0, P = 0;
  int64_t cblock = 0;                         // channels-last only
  int64_t a_n = 0, a_c = 0, a_p = 0;          // first input (x, z, r)
  int64_t b_n = 0, b_c = 0, b_p = 0;          // second input (dx, dy, dr)
  int64_t o_n = 0, o_c = 0, o_p = 0;          // output (dz, dx), when written
};

// s is [N, C] contiguous in the accumulation dtype (float, or double for double inputs).
using ChannelFn = void (*)(const Geometry& g, const void* a, const void* b, void* s, int64_t begin, int64_t end);
// mean/scale/shift: [C] contiguous, accumulation dtype; dz may be null (not wanted).
using BatchNormFn = void (*)(const Geometry& g, const void* z, const void* dy, const void* mean, const void* scale,
                             const void* shift, void* dz, void* s, int64_t begin, int64_t end);
// upper: ReLU6-style bound when has_upper; dx may be null (not wanted).
using ReluFn = void (*)(const Geometry& g, const void* r, const void* dr, bool has_upper, double upper, void* dx,
                        void* s, int64_t begin, int64_t end);

struct KernelTable {
  const char* isa;
  ChannelFn channel[2][kNumDTypes];  // [channels_last][dtype]
  BatchNormFn batchnorm[2][kNumDTypes];
  ReluFn relu[2][kNumDTypes];
};

// One per compiled ISA (cpu_kernels_<isa>.cpp); null where not compiled for this platform.
const KernelTable* kernels_default();
const KernelTable* kernels_avx2();

}  // namespace rgprune_fast::cpu
