#!/usr/bin/env bash
# Everything a GPU session owes, in ONE command of at most 8 minutes (docs/gpu_session.md):
#
#   OUT=DIR bash benchmarks/gpu_session.sh        # on the GPU machine, from the repository root
#   bash benchmarks/gpu_session.sh --dry          # the same stages on CPU, tiny (or RGPRUNE_GPU_DRY=1); CI runs it
#
# Stages, in priority order; each is time-boxed, and recorded in $OUT/status.tsv and $OUT/summary.md the moment
# it ends (results are written as they come: a killed session keeps what it did):
#   env            env.txt: GPU, driver, versions, commit (+dirty), date
#   build          the C++/CUDA extension, just in time, in the background from the start (overlaps oracle_triton)
#   oracle_triton  Triton kernels and score() (ResNet-18, a tiny Llama) against the float64 oracle
#   oracle_cuda    the same for the extension's CUDA kernels (waits for the build)
#   kernels        kernel GB/s vs the device's copy bandwidth, a reduced set of shapes
#   suite          ResNet-50 bf16 channels_last: score / floor / naive time and peak memory
#   llm            a Llama-2-7B-shape stack of 8 layers: score / floor / weight-Taylor time and peak memory
# A stage that fails or runs out of time is recorded and the next one runs. Exit status: 0 if every stage
# passed (or was skipped with its reason), 1 otherwise.
set -euo pipefail

dry=${RGPRUNE_GPU_DRY:-0}
case ${1:-} in
  --dry) dry=1 ;;
  "") ;;
  *)
    echo "usage: bash benchmarks/gpu_session.sh [--dry]" >&2
    exit 2
    ;;
esac

mkdir -p "${OUT:-gpu-results}"
out=$(cd "${OUT:-gpu-results}" && pwd) # absolute: the stages run from the repository root
cd "$(dirname "$0")/.."
py=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
# The extension's just-in-time build: cached here while the machine stays warm, on every core.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/build/torch_extensions}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

# Budgets in seconds (docs/gpu_session.md says why). `total` bounds the whole run: a stage gets the smaller
# of its budget and what is left, so the last (least important) stages are the ones cut short.
# RGPRUNE_GPU_TIME_SCALE multiplies them all (a slow or shared machine; the dry run's test uses 2).
if ((dry)); then
  mode="dry run (CPU)"
  total=180 b_build=150 b_oracle_triton=75 b_oracle_cuda=45 b_kernels=30 b_suite=60 b_llm=40
  dev=cpu ext_backend=cpp quick=(--quick)
  export CUDA_VISIBLE_DEVICES="" TRITON_INTERPRET=1 # CPU only, Triton under its interpreter
else
  mode="GPU"
  total=465 b_build=200 b_oracle_triton=110 b_oracle_cuda=60 b_kernels=60 b_suite=100 b_llm=90
  dev=cuda ext_backend=cuda quick=()
fi
scale=${RGPRUNE_GPU_TIME_SCALE:-1}
for v in total b_build b_oracle_triton b_oracle_cuda b_kernels b_suite b_llm; do
  declare "$v=$((${!v} * scale))"
done
started=$SECONDS
deadline=$((started + total))
failed=() finished=0

printf 'stage\tstatus\tseconds\tbudget\tnote\n' >"$out/status.tsv"

# record STAGE STATUS SECONDS BUDGET NOTE: one line of status.tsv, then summary.md rewritten from it.
record() {
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5//$'\t'/ }" >>"$out/status.tsv"
  case $2 in passed | skipped) ;; *) failed+=("$1 ($2)") ;; esac
  echo "-> $1: $2 in $3 s${5:+ ($5)}"
  summary
}

summary() {
  local verdict="all passed so far"
  ((finished)) && verdict="all passed"
  ((${#failed[@]})) && verdict="NOT ALL PASSED: ${failed[*]}"
  {
    echo "# GPU session ($mode): $verdict"
    echo
    echo "$(grep -m1 '^gpu:' "$out/env.txt" 2>/dev/null || echo 'gpu: ?'); $(grep -m1 '^commit:' "$out/env.txt" 2>/dev/null || true)"
    echo "$((SECONDS - started)) s of the session's $total s time box (env.txt: versions; <stage>.log: each stage's output)"
    echo
    echo "| stage | status | seconds | budget | note |"
    echo "|---|---|---|---|---|"
    tail -n +2 "$out/status.tsv" | while IFS=$'\t' read -r stage status seconds budget note; do
      echo "| $stage | $status | $seconds | $budget | ${note//|/\\|} |"
    done
    if ((dry)); then
      echo
      echo "## Dry run: what strictly needs CUDA, and what stood in for it"
      echo
      echo "- build: C++ kernels only (no nvcc, no CUDA kernels); a prebuilt extension is used as is."
      echo "- oracle_triton: the Triton interpreter on CPU; checks in gpu_oracle.HEAVY left out (--quick)."
      echo "- oracle_cuda: backend cpp on CPU stands in for cuda (CUDA opcheck and cuda-vs-triton not run)."
      echo "- kernels: cpp and the Triton interpreter on tiny shapes, wall-clock timed; the GB/s mean nothing."
      echo "- suite: the quick CIFAR ResNet-56 fp32 in place of ResNet-50 bf16 at 224x224; no peak GPU memory."
      echo "- llm: a tiny Llama in place of the 7B-shape stack; no peak GPU memory."
    fi
  } >"$out/summary.md"
}

# budget SECONDS: the smaller of SECONDS and what is left of the session (less 5 s to write the summary).
budget() {
  local left=$((deadline - SECONDS - 5))
  ((left > 0)) || left=0
  echo $(($1 < left ? $1 : left))
}

# inner BUDGET MARGIN: a stage's own time box (--max-seconds), MARGIN seconds inside `timeout`'s.
inner() {
  echo $(($1 > 2 * $2 ? $1 - $2 : $1 / 2))
}

# stage NAME BUDGET NOTE COMMAND...: COMMAND under `timeout` (its output in NAME.log). Exit 77 means "skipped"
# (the reason: its last line), 3 "its own time box left work undone". Partial results stay where they were written.
stage() {
  local name=$1 b=$2 note=$3 rc=0 t0=$SECONDS status last
  shift 3
  if ((b < 15)); then
    record "$name" timeout 0 "$b" "not run: the session's $total s are spent"
    return
  fi
  echo "== $name (budget $b s): $*"
  timeout -k 10 "$b" "$@" >"$out/$name.log" 2>&1 || rc=$?
  last=$(grep -v '^[[:space:]]*$' "$out/$name.log" | tail -n 1 | cut -c1-200 || true)
  case $rc in
    0) status=passed ;;
    77) status=skipped note="$last" ;;
    124 | 137) status=timeout note="past its $b s: partial results kept; $note" ;;
    3) status=timeout note="its own time box left work undone; $note" ;;
    *) status=failed note="exit $rc: $last" ;;
  esac
  [[ $status == failed || $status == timeout ]] && tail -n 15 "$out/$name.log" | sed 's/^/   | /'
  record "$name" "$status" $((SECONDS - t0)) "$b" "$note"
}

# --- env: written first, so that even a session killed in its first minute says where it ran
t0=$SECONDS
commit=${RGPRUNE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo "unknown (no git checkout; set RGPRUNE_COMMIT)")}
if [[ -z ${RGPRUNE_COMMIT:-} ]] && [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null || true) ]]; then
  commit+="+dirty"
fi
{
  echo "mode: $mode"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $commit"
  if ((!dry)) && command -v nvidia-smi >/dev/null; then
    echo "gpu: $(timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo '?')"
  else
    echo "gpu: none (CPU, $(nproc) cores)"
  fi
  echo "cpus: $(nproc)"
  timeout 60 "$py" - <<'EOF' || echo "python: the version report failed"
import importlib.metadata as md, platform, torch
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "absent"
print("python:", platform.python_version())
print("torch:", torch.__version__, "| cuda", torch.version.cuda, "| cudnn", torch.backends.cudnn.version())
print("packages:", ", ".join(f"{n} {version(n)}" for n in ("triton", "transformers", "torchvision", "timm", "ninja")))
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
    print("cuda_arch: %d.%d" % torch.cuda.get_device_capability(0))
EOF
} >"$out/env.txt" 2>&1
cat "$out/env.txt"
if ((!dry)); then
  # The device's own architecture only, stated (torch's default adds PTX for it, and a warning).
  arch=$(sed -n 's/^cuda_arch: //p' "$out/env.txt")
  if [[ -n $arch ]]; then
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}
  fi
fi
record env passed $((SECONDS - t0)) - "$mode"

# --- build: in the background from the start; oracle_triton needs no extension, so the two overlap.
# A build killed by its time box leaves torch's lock file behind (the folder survives on a warm machine),
# and the next build would wait on it for its whole budget: nothing else builds here, so remove it.
rm -f "$TORCH_EXTENSIONS_DIR"/*/lock
build_start=$(date +%s)
(
  rc=0
  timeout -k 5 "$(budget "$b_build")" "$py" -c 'from rgprune_fast.backends.extension import loader
e = loader.load()
print(f"extension: {e.how} | CUDA kernels: {e.has_cuda} | CPU kernels: {e.cpu_isa}")' >"$out/build.log" 2>&1 || rc=$?
  echo "$rc $(date +%s)" >"$out/build.rc"
) &
build_pid=$!

# wait_build: the build's row in the table; without a usable extension the later stages must not retry
# the build (each would wait on torch's build lock), so RGPRUNE_NO_EXT=1 from then on.
wait_build() {
  local rc end status note
  wait "$build_pid" || true
  read -r rc end <"$out/build.rc" || rc=1 end=$(date +%s)
  note=$(grep -m1 '^extension:' "$out/build.log" || tail -n 1 "$out/build.log" | cut -c1-200)
  case $rc in
    0) status=passed ;;
    124 | 137) status=timeout ;;
    *) status=failed ;;
  esac
  if [[ $status == passed ]] && ((!dry)) && ! grep -q 'CUDA kernels: True' "$out/build.log"; then
    status=failed note="built without CUDA kernels: $note"
  fi
  record build "$status" $((end - build_start)) "$b_build" "$note (in the background from the start)"
  [[ $status == passed ]] || export RGPRUNE_NO_EXT=1
}

# --- 1. the backends against the float64 oracle (RGPRUNE_NO_EXT: Triton needs no extension; no second build)
b=$(budget "$b_oracle_triton")
stage oracle_triton "$b" "oracle_triton/checks.md" env RGPRUNE_NO_EXT=1 "$py" -m benchmarks.gpu_oracle \
  --backend triton --device "$dev" --out "$out/oracle_triton" --max-seconds "$(inner "$b" 20)" "${quick[@]}"

wait_build
b=$(budget "$b_oracle_cuda")
if [[ -n ${RGPRUNE_NO_EXT:-} ]]; then
  record oracle_cuda failed 0 "$b" "not run: the extension did not build (build.log)"
else
  stage oracle_cuda "$b" "oracle_cuda/checks.md$( ((dry)) && echo '; dry: cpp on CPU stands in for cuda')" \
    "$py" -m benchmarks.gpu_oracle --backend "$ext_backend" --device "$dev" --out "$out/oracle_cuda" \
    --max-seconds "$(inner "$b" 15)" "${quick[@]}"
fi

# --- 2. kernel GB/s vs the copy bandwidth: conv activations (the >= 85 % target), LLM hidden states, a mid-size conv
mkdir -p "$out/kernels"
# shellcheck disable=SC2054  # the commas separate the Python option's own list
if ((dry)); then
  kernel_args=(--shapes 4x16x8x8,2x32x64 --dtypes bf16 --backends cpp,triton --iters 1 --repeats 2)
else
  kernel_args=(--shapes 256x256x56x56,8x2048x4096,64x256x28x28 --dtypes bf16,fp32 --backends cuda,triton --iters 50)
fi
stage kernels "$(budget "$b_kernels")" "kernels/kernels.md" "$py" -m benchmarks.gpu_cuda_vs_triton --device "$dev" \
  "${kernel_args[@]}" --no-score --csv "$out/kernels/kernels.csv" --md "$out/kernels/kernels.md"

# --- 3. ResNet-50 bf16 channels_last: score / floor / naive, time and peak memory
if ((dry)); then
  suite_args=(--quick --configs resnet56 --repeats 1 --warmup 0 --batches-per-call 2)
else
  suite_args=(--configs resnet50/3x224x224/bf16/channels_last --repeats 3 --warmup 1)
fi
stage suite "$(budget "$b_suite")" "suite/results.md" "$py" -m benchmarks.suite --out "$out/suite" --no-kernels \
  "${suite_args[@]}"

# --- 4. a Llama-2-7B-shape layer stack (8 of its 32 layers; batch 1..8 x 2048 tokens)
if ! "$py" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("transformers") is None)'; then
  record llm skipped 0 - "transformers is not importable here"
else
  b=$(budget "$b_llm")
  if ((dry)); then
    llm_args=(--quick --max-batch 1 --repeats 1 --max-seconds "$(inner "$b" 25)")
  else
    llm_args=(--layers 8 --max-batch 8 --repeats 2 --max-seconds "$(inner "$b" 40)")
  fi
  stage llm "$b" "llm/llm.md" "$py" -m benchmarks.llm --out "$out/llm" "${llm_args[@]}"
fi

finished=1
summary
echo
cat "$out/summary.md"
((${#failed[@]} == 0))
