#!/usr/bin/env bash
# Configures and builds. Usage: scripts/build.sh [--sanitize]
#   default      Release build in build/
#   --sanitize   ASan + UBSan build of the library and tests in build-asan/
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--sanitize" ]]; then
  dir=build-asan
  flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOE_SANITIZE=ON -DMOE_BUILD_BENCH=OFF)
else
  dir=build
  flags=(-DCMAKE_BUILD_TYPE=Release)
fi
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [[ -f "$dir/CMakeCache.txt" ]]; then
  cmake -S . -B "$dir" "${flags[@]}" >/dev/null
else
  cmake -S . -B "$dir" "${generator[@]}" "${flags[@]}" >/dev/null
fi
cmake --build "$dir" -j "$(nproc)"
