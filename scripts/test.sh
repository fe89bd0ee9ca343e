#!/usr/bin/env bash
# Sets up, builds and runs every test. Usage: scripts/test.sh [--sanitize]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh "$@"
dir=build
[[ "${1:-}" == "--sanitize" ]] && dir=build-asan
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
ctest --test-dir "$dir" --output-on-failure -j 2
