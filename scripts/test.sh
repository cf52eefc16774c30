#!/usr/bin/env bash
# Set up, build everything (CUDA code too where nvcc is found) and run every test with ctest.
# GPU tests report themselves skipped where there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake --build "$BUILD_DIR"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)" "$@"
