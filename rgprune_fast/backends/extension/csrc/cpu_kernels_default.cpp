// The CPU kernels for the baseline ISA of the build (x86-64: SSE2, via the compiler's
// auto-vectorisation of at::vec's portable Vectorized). Always compiled; the fallback everywhere.
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "cpu_kernels_impl.h"

namespace rgprune_fast::cpu {
const KernelTable* kernels_default() { return DEFAULT::table(); }
}  // namespace rgprune_fast::cpu
