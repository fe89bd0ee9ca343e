#!/usr/bin/env bash
# Sets up, builds and runs the main job on the bundled default. Until the language-model
# trainer lands, that is the MoE layer demo: one Mixtral-shaped layer (d=512, ffn=1408,
# 8 experts, top-2, 4096 tokens) run forward+backward, with its routing and speed printed and
# a summary written to runs/layer-demo/summary.json. Extra arguments go to `moe layer`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
mkdir -p runs/layer-demo
# OpenBLAS 0.3.21 detects this CPU family as Haswell; SkylakeX kernels use AVX-512 (MACHINE.md).
if grep -q avx512f /proc/cpuinfo 2>/dev/null; then export OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-SkylakeX}"; fi
./build/moe layer --out runs/layer-demo/summary.json "$@"
