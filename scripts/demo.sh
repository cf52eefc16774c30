#!/usr/bin/env bash
# The main job: set up, build the tool and run `tilemoe demo` on the default device.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake --build "$BUILD_DIR" --target tilemoe_cli
"$BUILD_DIR/bin/tilemoe" demo "$@"
