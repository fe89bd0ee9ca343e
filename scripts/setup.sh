#!/usr/bin/env bash
# Installs every build and test dependency from Debian packages. Idempotent: when everything
# is already installed it only checks. Needs root (or sudo) when something is missing.
# Usage: scripts/setup.sh [--reference]   (--reference adds python3-torch for tools/reference)
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libopenblas-openmp-dev   # GEMM backend (OpenMP build: nests cleanly inside our threads)
  nlohmann-json3-dev libcli11-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libsentencepiece-dev     # tokenizer trained on the bundled corpus
  libicu-dev               # NFC and the Unicode-class pre-tokenizer of tokenizer.json (Qwen, OLMoE)
  libfreetype-dev fonts-dejavu-core   # the glyph image data set of the ViT encoder
  libopenmpi-dev openmpi-bin   # expert parallelism over MPI (mpirun)
  # The bundled corpus is built from these: prose in eight languages and Python source.
  fortunes fortunes-de fortunes-es fortunes-it fortunes-ru fortunes-pl fortunes-cs fortunes-zh
  libpython3.11-stdlib
  # The report_browser test opens report.html in headless Chromium through chromedriver.
  chromium chromium-driver python3-selenium
  # scripts/fuzz.sh: clang with libFuzzer and the sanitizer runtimes (libclang-rt-14-dev holds
  # libclang_rt.fuzzer), clang's OpenMP (libomp-dev) and llvm-symbolizer for readable stacks.
  clang libclang-rt-14-dev libomp-dev llvm
)
if [[ "${1:-}" == "--reference" ]]; then
  packages+=(python3 python3-numpy python3-torch python3-regex)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
