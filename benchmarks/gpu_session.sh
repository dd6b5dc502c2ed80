#!/usr/bin/env bash
# Everything a GPU session owes, in stages that each fit one 10-minute device call:
#
#   bash benchmarks/gpu_session.sh tests    # JIT-build the extension with CUDA; the CUDA/Triton tests
#   bash benchmarks/gpu_session.sh kernels  # CUDA extension vs Triton kernels (GB/s)
#   bash benchmarks/gpu_session.sh suite    # python -m benchmarks.suite (floor / score / naive, memory)
#   bash benchmarks/gpu_session.sh llm      # Llama-2-7B shape (needs transformers importable)
#
# Run from the repository root with PYTHONPATH=. on the device machine; results go to $OUT (the
# device tool's output folder), else ./gpu-results. Each stage writes env.txt (device, versions,
# commit) next to its outputs, for committing under benchmarks/results/<device>/.
set -euo pipefail
stage=${1:?usage: gpu_session.sh tests|kernels|suite|llm}
out=${OUT:-gpu-results}/$stage
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:-.}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/build/torch_extensions}  # kept while the machine is warm
export MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$(python -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')"
  date -u +%Y-%m-%dT%H:%MZ
} | tee "$out/env.txt"

build_extension() {
  local t0=$SECONDS
  python -c 'from rgprune_fast.backends.extension import loader; e = loader.load(); print("extension:", e.how, "cuda:", e.has_cuda)' \
    2>&1 | tee "$out/build.log"
  echo "build: $((SECONDS - t0)) s" | tee -a "$out/build.log"
}

case $stage in
  tests)
    build_extension
    RGPRUNE_TEST_REQUIRE=torch@cuda,cuda@cuda,triton@cuda timeout 420 python -m pytest -q -x -p no:cacheprovider \
      tests/test_cuda_ext.py tests/test_triton.py tests/test_backends.py tests/test_score_oracle.py \
      2>&1 | tee "$out/tests.log"
    ;;
  kernels)
    build_extension
    python -m benchmarks.gpu_cuda_vs_triton --csv "$out/cuda_vs_triton.csv" 2>&1 | tee "$out/cuda_vs_triton.md"
    ;;
  suite)
    build_extension
    python -m benchmarks.suite --out "$out" --max-minutes 7.5 2>&1 | tee "$out/suite.log"
    ;;
  llm)
    python -c 'import transformers' || { echo "transformers is not importable here" >&2; exit 2; }
    python -m benchmarks.llm --out "$out" 2>&1 | tee "$out/llm.log"
    ;;
  *)
    echo "unknown stage $stage (tests|kernels|suite|llm)" >&2
    exit 2
    ;;
esac
