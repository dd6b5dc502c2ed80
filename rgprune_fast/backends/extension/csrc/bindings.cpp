// The op schemas of the compiled extension (rgprune_fast.backends.extension._C) and its tiny Python module.
//
// The ops implement the reduction contract of rgprune_fast/backends/contract.py:
//   channel_stats(x, dx, channel_dim)                       -> s[N, C]
//   batchnorm_stats(z, dy, mean, scale, shift, need_dz)      -> (dz, s)   (channel dim 1)
//   relu_stats(r, dr, upper, channel_dim, need_dx)           -> (dx, s)
// s is float32 (float64 for float64 inputs); dz/dx have the dtype and layout of dy/dr (empty_like),
// and are empty [0] tensors when not needed. Implementations: stats_cpu.cpp (CPU) and
// stats_cuda_glue.cpp + stats_cuda.cu (CUDA, only in builds with CUDA); the fake (meta)
// implementations are registered from Python (../ops.py).
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(rgprune_fast, m) {
  m.def("channel_stats(Tensor x, Tensor dx, int channel_dim) -> Tensor");
  m.def(
      "batchnorm_stats(Tensor z, Tensor dy, Tensor mean, Tensor scale, Tensor shift, bool need_dz) -> (Tensor, "
      "Tensor)");
  m.def("relu_stats(Tensor r, Tensor dr, float? upper, int channel_dim, bool need_dx) -> (Tensor, Tensor)");
}

namespace {

PyObject* py_cpu_kernel_isa(PyObject*, PyObject*) { return PyUnicode_FromString(rgprune_fast::cpu_kernel_isa()); }

PyObject* py_has_cuda_kernels(PyObject*, PyObject*) {
#ifdef RGP_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef methods[] = {
    {"cpu_kernel_isa", py_cpu_kernel_isa, METH_NOARGS, "The CPU kernel set in use: DEFAULT or AVX2."},
    {"has_cuda_kernels", py_has_cuda_kernels, METH_NOARGS, "Whether this build has the CUDA kernels."},
    {nullptr, nullptr, 0, nullptr},
};

#define RGP_CONCAT2(a, b) a##b
#define RGP_CONCAT(a, b) RGP_CONCAT2(a, b)
#define RGP_STR2(a) #a
#define RGP_STR(a) RGP_STR2(a)
#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, RGP_STR(TORCH_EXTENSION_NAME),
                          "rgprune_fast reduction kernels (the ops live under torch.ops.rgprune_fast)", -1, methods};

}  // namespace

// PyInit__C when built by setup.py, PyInit_<name> when built just in time by torch.utils.cpp_extension.
PyMODINIT_FUNC RGP_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&module_def); }
