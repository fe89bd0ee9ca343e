#!/usr/bin/env bash
# Prepares the GPU run of the CUDA backend (docs/cuda.md "On a GPU machine") for a machine
# that has the GPU, CUDA and PyTorch but none of the Debian packages the build needs (the
# lent device machine has no package registry): builds build-cuda here with nvcc, then packs
# the GPU tests, the benchmark, `moe` (for --device cuda) and the shared libraries they need
# beyond glibc and CUDA into .gpu-bundle/bundle.tar.xz, and the prepared corpus of the default
# run into .gpu-bundle/data.tar.xz (git-ignored; about 23 MB, under the device tool's 64 MiB
# working-tree limit), for scripts/gpu_run.sh to unpack and run there.
# Usage: scripts/gpu_bundle.sh   (environment: NVCC, JOBS as for scripts/cuda_check.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS="${JOBS:-2}" scripts/cuda_check.sh
bins=(test_cuda_moe test_cuda_transformer bench_cuda_moe moe)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/lib" "$stage/lib-fallback"
for b in "${bins[@]}"; do cp "build-cuda/$b" "$stage/"; done
# glibc and CUDA's own libraries come from the GPU machine; libstdc++ and libgcc_s only when
# its own are missing or older (gpu_run.sh decides), everything else always.
for lib in $(cd build-cuda && ldd "${bins[@]}" | awk '/=> \// {print $3}' | sort -u); do
  case "$(basename "$lib")" in
    libc.so* | libm.so* | libdl.so* | libpthread.so* | librt.so* | libcuda.so* | libcudart.so* | \
      libcublas.so* | libcublasLt.so*) ;;
    libstdc++.so* | libgcc_s.so*) cp -L "$lib" "$stage/lib-fallback/" ;;
    *) cp -L "$lib" "$stage/lib/" ;;
  esac
done
rm -rf .gpu-bundle
mkdir -p .gpu-bundle
tar -cJf .gpu-bundle/bundle.tar.xz -C "$stage" .
# The prepared corpus and tokenizer of the default run (scripts/run.sh makes them): the GPU
# machine cannot build the corpus from Debian packages.
if [[ -d data/corpus ]]; then
  tar -cJf .gpu-bundle/data.tar.xz data
else
  echo "gpu_bundle: no data/ (run scripts/run.sh once): gpu_run.sh's train stage will be skipped" >&2
fi
git rev-parse HEAD > .gpu-bundle/COMMIT
echo "gpu_bundle: $(du -sh .gpu-bundle | cut -f1) in .gpu-bundle (built at $(cut -c1-12 .gpu-bundle/COMMIT));" \
     "carry it: run(command=\"scripts/gpu_run.sh all\", carry=[\".gpu-bundle\"])"
