#!/usr/bin/env bash
# Prepares the peers that bench_moe_variants times beside tilemoe, for a GPU machine with no
# network: run it here (with network), then carry .peers and .sonic with the GPU call
# (scripts/gpu_check.sh finds them). Both folders are git-ignored: no peer code enters the repo.
#
#   .peers/scattermoe   ScatterMoE's Python source (github.com/shawntan/scattermoe) at a pinned commit
#   .sonic/site.tar.xz  sonic-moe 0.1.2.post1, quack-kernels 0.4.1, nvidia-cutlass-dsl(-libs-base) 4.4.2
#                       unpacked and xz-packed (the cutlass wheel alone is over the 64 MiB a call carries)
#   .sonic/*.whl        apache-tvm-ffi, torch-c-dlpack-ext (quack's other needs; the GPU machine has einops)
#
# sonic-moe 0.1.2.post1 pins nvidia-cutlass-dsl 4.4.2; quack-kernels 0.4.1 is the newest QuACK that
# accepts it. Usage: scripts/peers.sh [scattermoe] [sonicmoe]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${*:-scattermoe sonicmoe}
for d in /.peers/ /.sonic/; do grep -qx "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done

if [[ " $WHAT " == *" scattermoe "* ]] && [ ! -d .peers/scattermoe/scattermoe ]; then
  commit=47b5e15
  # SCATTERMOE_GIT: where to clone from (default GitHub; a local mirror where GitHub is not reachable)
  rm -rf .peers/scattermoe-src && git clone -q "${SCATTERMOE_GIT:-https://github.com/shawntan/scattermoe}" .peers/scattermoe-src
  git -C .peers/scattermoe-src checkout -q $commit
  mkdir -p .peers/scattermoe && cp -r .peers/scattermoe-src/scattermoe .peers/scattermoe-src/LICENSE .peers/scattermoe/
  echo "shawntan/scattermoe $(git -C .peers/scattermoe-src rev-parse HEAD)" > .peers/scattermoe/COMMIT
  rm -rf .peers/scattermoe-src
fi

if [[ " $WHAT " == *" sonicmoe "* ]] && [ ! -f .sonic/site.tar.xz ]; then
  tmp=$(mktemp -d)
  pip_get() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d "$@"
  }
  pip_get "$tmp/w" sonic-moe==0.1.2.post1 quack-kernels==0.4.1 nvidia-cutlass-dsl==4.4.2 \
    nvidia-cutlass-dsl-libs-base==4.4.2
  mkdir -p "$tmp/site" .sonic
  for w in "$tmp"/w/*.whl; do (cd "$tmp/site" && unzip -q -o "$w"); done
  tar -cJf .sonic/site.tar.xz -C "$tmp/site" .
  pip_get .sonic "apache-tvm-ffi>=0.1.6,<0.2" torch-c-dlpack-ext
  rm -rf "$tmp"
fi
du -sh .peers .sonic 2>/dev/null || true
