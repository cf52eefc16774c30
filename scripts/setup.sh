#!/usr/bin/env bash
# Installs the Debian packages tilemoe builds with, where missing, then configures the build.
# Used by demo.sh and test.sh; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in cmake ninja-build g++ libopenblas-dev libgtest-dev libbenchmark-dev; do
  have_pkg "$p" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

BUILD_DIR=${BUILD_DIR:-build}
# nvcc is not always on PATH even where the toolkit is installed.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release ${TILEMOE_CMAKE_ARGS:-} >/dev/null
backend="CPU only"
grep -qE '^CMAKE_CUDA_COMPILER:[A-Z]+=/' "$BUILD_DIR/CMakeCache.txt" && backend="CPU + CUDA"
echo "setup: configured $BUILD_DIR ($backend)"
