#!/usr/bin/env bash
# Builds the GPU binaries here (nvcc, no GPU needed) for a device call to run without compiling:
# the GPU tests and bench_moe_variants, xz-compressed into .prebench/ (git-ignored; ~3.6 MB
# against ~23 MB unpacked, which leaves room beside .sonic's 56 MB under the device tool's 64 MiB
# for carried paths), with the commit they were built from in .prebench/COMMIT and .commit (the
# benchmarks name it). On the GPU machine, with .prebench and .commit carried:
# `scripts/gpu_prebuilt.sh tests sanitize bench ...` unpacks and runs them.
# Usage: scripts/prebuild.sh [build-dir] (default build-prebuilt; an existing one is reused).
# Built on Debian 12 (glibc 2.36), they run on the GPU machine's Ubuntu 24.04 (glibc 2.39) with
# its CUDA 13 and OpenBLAS.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build-prebuilt}
command -v nvcc > /dev/null || { echo "prebuild: nvcc not found (the GPU binaries need the CUDA toolkit)" >&2; exit 1; }
cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTILEMOE_CUDA=ON > /dev/null
ninja -C "$B" tilemoe_tests_gpu bench_moe_variants
rm -rf .prebench && mkdir -p .prebench/tests .prebench/bin
xz -T0 -c "$B/tests/tilemoe_tests_gpu" > .prebench/tests/tilemoe_tests_gpu.xz
xz -T0 -c "$B/bin/bench_moe_variants" > .prebench/bin/bench_moe_variants.xz
commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- src include tests benchmarks CMakeLists.txt || commit="$commit+uncommitted"
echo "$commit" > .prebench/COMMIT
echo "$commit" > .commit
du -sh .prebench
