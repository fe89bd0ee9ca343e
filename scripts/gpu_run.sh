#!/usr/bin/env bash
# Runs the CUDA backend's checks on a GPU machine from the binaries of scripts/gpu_bundle.sh
# (.gpu-bundle/, carried there with the checkout): the GPU tests, the grouped-GEMM fallback,
# compute-sanitizer memcheck and racecheck, and the benchmark against cuBLAS dense and the
# PyTorch loop block. Logs go to $OUT (the device tool's result folder) or gpu-results/.
# Usage: scripts/gpu_run.sh [STAGE...]  with stages tests, sanitize, bench, train or all (the
# default). Each step has a time limit; "tests sanitize" and "bench train" each fit one of the
# device machine's 10-minute commands, "all" usually does.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
stages=" ${*:-all} "
want() { [[ $stages == *" $1 "* || $stages == *" all "* ]]; }
out="${OUT:-gpu-results}"
mkdir -p "$out"
[[ -f .gpu-bundle/bundle.tar.xz ]] || { echo "gpu_run: no .gpu-bundle: run scripts/gpu_bundle.sh first" >&2; exit 1; }
bundle=/tmp/moe-gpu-bundle
if [[ ! -f $bundle/COMMIT ]] || ! cmp -s .gpu-bundle/COMMIT $bundle/COMMIT; then
  rm -rf $bundle && mkdir -p $bundle
  tar -xJf .gpu-bundle/bundle.tar.xz -C $bundle && cp .gpu-bundle/COMMIT $bundle/
fi
export MOE_FIXTURE_DIR="$PWD/tests/fixtures"
export MOE_REQUIRE_GPU=1  # a missing device fails the tests instead of skipping them
export LD_LIBRARY_PATH="$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# CUDA 13's runtime and cuBLAS: the toolkit's, else the pip wheels' (PyTorch's).
if ldd $bundle/test_cuda_moe | grep -q "libcu.*not found"; then
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
           $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13/lib") for p in nvidia.__path__))' 2>/dev/null); do
    [[ -e $d/libcublas.so.13 ]] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
  done
fi
ldd $bundle/test_cuda_moe | grep -q "not found" &&
  export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$bundle/lib-fallback"
{
  echo "commit of the binaries: $(cat $bundle/COMMIT 2>/dev/null), checkout: $(git rev-parse HEAD 2>/dev/null)"
  nvidia-smi -L
  ldd $bundle/test_cuda_moe | grep -E "not found|cublas|cudart|stdc"
} 2>&1 | tee "$out/env.log"

status=0
step() {  # step NAME SECONDS COMMAND...: runs with a time limit, logs to $out/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name ($*)"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 4 "$out/$name.log"
  echo "== $name: exit $rc"
  [[ $rc -eq 0 ]] || status=1
}
if want tests; then
  step test_cuda_moe 120 $bundle/test_cuda_moe
  step test_cuda_transformer 180 $bundle/test_cuda_transformer
  step test_cuda_moe_looped 120 env MOE_CUDA_GROUPED_GEMM=0 $bundle/test_cuda_moe
fi
if want sanitize; then
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  cs="$sanitizer --error-exitcode 1 --print-limit 20"
  step memcheck_moe 150 $cs --tool memcheck $bundle/test_cuda_moe
  step racecheck_moe 150 $cs --tool racecheck $bundle/test_cuda_moe --gtest_filter='Layer/*:Random/*mixtral*'
  step memcheck_transformer 200 $cs --tool memcheck $bundle/test_cuda_transformer \
    --gtest_filter='CudaTransformerGolden.*:CudaTransformer.*'
fi
if want bench; then
  step bench 300 python3 bench/cuda/compare_torch_cuda.py --ours $bundle/bench_cuda_moe
  step bench_looped 120 env MOE_CUDA_GROUPED_GEMM=0 $bundle/bench_cuda_moe --iters 10
fi
if want train; then
  # The default MoE on the bundled corpus, its steps on the GPU: metrics and report come back.
  if [[ -f .gpu-bundle/data.tar.xz ]]; then
    [[ -d data/corpus ]] || tar -xJf .gpu-bundle/data.tar.xz
    rm -rf /tmp/moe_gpu_run
    step train_default 300 $bundle/moe train --device cuda --steps 300 --out /tmp/moe_gpu_run --no-progress
    cp /tmp/moe_gpu_run/metrics.jsonl /tmp/moe_gpu_run/report.md "$out/" 2>/dev/null
  else
    echo "== train_default: skipped (no .gpu-bundle/data.tar.xz)"
  fi
fi
exit $status
