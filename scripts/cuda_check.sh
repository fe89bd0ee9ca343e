#!/usr/bin/env bash
# Compile-only check of the optional CUDA backend (docs/cuda.md): configures build-cuda with
# -DMOE_CUDA=ON and builds the library, its test and its benchmark. Runs nothing on a GPU, so
# it works on any machine with the CUDA toolkit. Usage: scripts/cuda_check.sh
# Environment: NVCC (default /usr/local/cuda/bin/nvcc), JOBS (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc="${NVCC:-/usr/local/cuda/bin/nvcc}"
if [[ ! -x "$nvcc" ]]; then
  echo "cuda_check: nvcc not found at $nvcc (install the CUDA toolkit or set NVCC=/path/to/nvcc);" \
       "the CUDA backend was not compiled" >&2
  exit 1
fi
start=$(date +%s)
cmake -S . -B build-cuda -G Ninja -DMOE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" >/dev/null
cmake --build build-cuda --target moe_cuda moe_cli test_cuda_moe test_cuda_transformer bench_cuda_moe -j "${JOBS:-1}"
echo "cuda_check: moe_cuda, moe (with --device cuda), test_cuda_moe, test_cuda_transformer and bench_cuda_moe compiled in $(( $(date +%s) - start )) s" \
     "(compile only: nothing ran on a GPU)"
