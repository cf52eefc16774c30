#!/usr/bin/env bash
# On the GPU machine: unpacks the binaries that scripts/prebuild.sh built and xz-compressed into
# .prebench/ (carried with .commit) into /tmp/tilemoe_prebuilt (PREBUILT_DIR), then runs
# scripts/gpu_check.sh over them with the given steps (tests, sanitize, bench, ab, ...; its
# environment variables apply). The whole log goes to $OUT/prebuilt_<steps>.log; its last 11000
# characters, with the summary table, are printed.
#   scripts/gpu_prebuilt.sh tests sanitize
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
[ -f .prebench/COMMIT ] || { echo "gpu_prebuilt: no .prebench/COMMIT (run scripts/prebuild.sh, then carry .prebench and .commit)" >&2; exit 2; }
B=${PREBUILT_DIR:-/tmp/tilemoe_prebuilt}
rm -rf "$B" && mkdir -p "$B/tests" "$B/bin" && cp .prebench/COMMIT "$B/"
for f in .prebench/tests/*.xz .prebench/bin/*.xz; do
  o="$B/${f#.prebench/}" && o=${o%.xz}
  xz -dc "$f" > "$o" && chmod +x "$o" || { echo "gpu_prebuilt: cannot unpack $f" >&2; exit 2; }
done
log="$OUT/prebuilt_$(echo "${*:-default}" | tr ' ' '_').log"
OUT=$OUT BUILD_DIR=$B bash scripts/gpu_check.sh "$@" > "$log" 2>&1
rc=$?
tail -c 11000 "$log"
exit $rc
