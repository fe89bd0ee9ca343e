#!/usr/bin/env bash
# `moe train` against its PyTorch eager twin (issue 23; bench/README.md):
#   bench/train_vs_torch.sh [OUT_DIR]
# builds moe and instruction_peak in $MOE_BUILD_DIR (default build), prints this machine's
# instruction ceilings, then bench/train_vs_torch.py alternates, ROUNDS times, `moe train
# --profile` on CONFIG and bench/torch_twin.py (the same model, parameter count checked, HF-style
# MoE block, AdamW, clipping) for STEPS steps each, and prints tokens/s of both, the ratio and
# moe's step profile (also written to OUT_DIR/table.md; OUT_DIR defaults to runs/train-vs-torch).
# Environment: CONFIG (configs/default.json), STEPS (12), WARMUP (2), ROUNDS (3),
# OMP_NUM_THREADS (2, both sides), OPENBLAS_CORETYPE (SkylakeX, for moe and PyTorch alike).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/train-vs-torch}
build=${MOE_BUILD_DIR:-build}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}
[ -x "$build/moe" ] || cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" --target moe instruction_peak >/dev/null
mkdir -p "$out"
"$build/bench/instruction_peak" | tee "$out/peak.txt"
/usr/bin/python3 bench/train_vs_torch.py --moe "$build/moe" --config "${CONFIG:-configs/default.json}" \
  --out "$out" --steps "${STEPS:-12}" --warmup "${WARMUP:-2}" --rounds "${ROUNDS:-3}" \
  --threads "$OMP_NUM_THREADS" | tee "$out/table.md"
exit "${PIPESTATUS[0]}"
