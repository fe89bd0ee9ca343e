#!/usr/bin/env bash
# One command for the side-by-side benchmark of issue 3 (bench/README.md):
#   bench/compare_torch.sh [OUT_DIR]
# builds bench/compare_torch (Release, -march=native) in $MOE_BUILD_DIR (default build-bench),
# then bench/compare_torch.py alternates, per shape, our MoE layer forward+backward in fp32 and
# bf16 plus OpenBLAS sgemm on the same expert GEMMs (the C++ program) with the Hugging
# Face-style PyTorch block on the same weights and inputs, checks that outputs and gradients
# agree and prints the tables (also written to OUT_DIR/table.md; OUT_DIR defaults to
# runs/compare-torch).
# Environment: OMP_NUM_THREADS (default 2, both sides), SHAPES (default 0,1,2), ROUNDS (3),
# REPS (ours and sgemm per round, 5), TORCH_REPS (PyTorch per round, 3), OPENBLAS_CORETYPE
# (default SkylakeX, as ../shared/MACHINE.md asks for the engine and every baseline alike).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/compare-torch}
build=${MOE_BUILD_DIR:-build-bench}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" --target compare_torch instruction_peak
mkdir -p "$out"
# The ceilings every figure below is bounded by, measured on this machine in this run.
"$build/bench/instruction_peak" | tee "$out/peak.txt"
/usr/bin/python3 bench/compare_torch.py --bin "$build/bench/compare_torch" --out "$out" \
  --shapes "${SHAPES:-0,1,2}" --rounds "${ROUNDS:-3}" --reps "${REPS:-5}" \
  --torch-reps "${TORCH_REPS:-3}" | tee "$out/table.md"
exit "${PIPESTATUS[0]}"
