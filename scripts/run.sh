#!/usr/bin/env bash
# Sets up, builds and runs the main job on the bundled default: `moe train` trains the default
# small MoE language model (configs/default.json: 4 layers, 8 experts, top-2) on the bundled
# corpus (built from Debian packages into data/ on the first run, with its sentencepiece
# tokenizer), with a progress bar, and writes runs/default/{checkpoint.safetensors,
# model.safetensors, metrics.jsonl, report.md, summary.json}. Extra arguments go to `moe train`
# (e.g. --steps 100, --out runs/mine, --resume). An existing runs/default is never overwritten:
# pass --resume to continue it, or --out for a new run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
# OpenBLAS 0.3.21 may detect an AVX-512 CPU as Haswell; SkylakeX kernels use AVX-512 (MACHINE.md).
if grep -q avx512f /proc/cpuinfo 2>/dev/null; then export OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-SkylakeX}"; fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
./build/moe train "$@"
