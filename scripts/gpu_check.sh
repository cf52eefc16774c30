#!/usr/bin/env bash
# One call on the GPU machine: build, GPU tests, compute-sanitizer, benchmark, example.
# Usage: scripts/gpu_check.sh [build] [tests] [sanitize] [bench] [example] [profile]
#        (default: all but profile)
# Logs go to $OUT (or ./gpu_out); a short summary table is printed last.
# bench: BENCH_SETS="cfg[@T],cfg[@T]...@T ..." (one benchmark run per set; default BENCH_CONFIGS
# at BENCH_TOKENS), BENCH_ARGS (more flags), BENCH_PEERS="torch scattermoe sonicmoe" (those whose
# code travelled: scripts/peers.sh), PEER_TIMEOUT (seconds per peer script, default 400).
set -u
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
STEPS=${*:-build tests sanitize bench example}
has() { [[ " $STEPS " == *" $1 "* ]]; }
SUMMARY=()
note() { SUMMARY+=("$1"); echo "== $1"; }
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/card.txt"
BUILD=build
if has build; then
  start=$SECONDS
  cmake -S . -B $BUILD -G Ninja -DTILEMOE_CUDA=ON > "$OUT/cmake.log" 2>&1 &&
    ninja -C $BUILD -j16 -k 0 ${BUILD_TARGETS:-} > "$OUT/build.log" 2>&1
  rc=$?
  note "build rc=$rc ($((SECONDS - start)) s)"
  if [ $rc -ne 0 ]; then grep -E "error|FAILED" -A3 "$OUT/build.log" | head -60; fi
fi
T=$BUILD/tests/tilemoe_tests_gpu
if has tests; then
  start=$SECONDS
  $T --gtest_brief=1 > "$OUT/tests_gpu.log" 2>&1
  rc=$?
  note "tests_gpu rc=$rc ($((SECONDS - start)) s): $(grep -E '^\[  (PASSED|FAILED)' "$OUT/tests_gpu.log" | tr '\n' ' ')"
  grep -E "Failure|FAILED|error|Expected|Which is|seed=|actual" "$OUT/tests_gpu.log" | head -60
  $BUILD/tests/tilemoe_tests_cpu --gtest_brief=1 > "$OUT/tests_cpu.log" 2>&1
  note "tests_cpu rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/tests_cpu.log" | tr '\n' ' ')"
fi
if has sanitize; then
  # Small cases only (TILEMOE_SANITIZE=1 in the tests); the 131072-token and 22 GB DeepSeek-V3
  # runs and the fp32 cuBLAS matrix are left to the plain run. racecheck is far slower than
  # memcheck, so it takes the suites whose kernels use shared memory, minus the graph replays.
  F_MEM='-GpuForward.LargeTokenCounts:GpuForward.DeepSeekV3SizedLayer:GpuForward.SequentialFp32ShapeMatrix'
  F_RACE='GpuRouter.*:GpuMetadata.*:GpuCombine.*:GpuGroupedGemm.*:GpuRounding.MatchesCpuRoundRouting:GpuForward.OneExpertTakesEveryToken'
  for tool in memcheck racecheck synccheck; do
    start=$SECONDS
    F=$F_MEM; [ $tool != memcheck ] && F=$F_RACE
    TILEMOE_SANITIZE=1 timeout 420 compute-sanitizer --tool $tool --error-exitcode 9 $T --gtest_brief=1 --gtest_filter="$F" \
      > "$OUT/sanitize_$tool.log" 2>&1
    rc=$?
    note "sanitizer $tool rc=$rc ($((SECONDS - start)) s): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitize_$tool.log" | tail -1) $(grep -E '^\[  (PASSED|FAILED)' "$OUT/sanitize_$tool.log" | tr '\n' ' ')"
    grep -E "^=========  *(Invalid|Race|Error)" "$OUT/sanitize_$tool.log" | sort | uniq -c | head -10
  done
fi
if has bench; then
  B=$BUILD/bin/bench_moe_variants
  if [ -x $B ]; then
    # ScatterMoE runs where its source was put in .peers/scattermoe (git-ignored; carried).
    # BENCH_PEERS picks among them (default all three).
    WANT=" ${BENCH_PEERS:-torch scattermoe sonicmoe} "
    PEERS=()
    [[ $WANT == *" torch "* ]] && PEERS+=(--torch benchmarks/peers/torch_pipeline.py)
    [[ $WANT == *" scattermoe "* ]] && [ -d .peers/scattermoe/scattermoe ] &&
      PEERS+=(--scattermoe benchmarks/peers/scattermoe_pipeline.py)
    # SonicMoE runs where its packages travelled in .sonic/ (git-ignored; carried): site.tar.xz,
    # the unpacked sonic-moe, quack-kernels and nvidia-cutlass-dsl wheels, and the small wheels
    # of their other needs (scripts/peers.sh makes both folders).
    if [[ $WANT == *" sonicmoe "* ]] && [ -f .sonic/site.tar.xz ]; then
      rm -rf /tmp/sonic_site && mkdir -p /tmp/sonic_site && tar -xJf .sonic/site.tar.xz -C /tmp/sonic_site &&
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/sonic_site .sonic/*.whl \
          > "$OUT/sonic_install.log" 2>&1 &&
        PEERS+=(--sonicmoe benchmarks/peers/sonicmoe_pipeline.py) &&
        export PYTHONPATH=/tmp/sonic_site:/tmp/sonic_site/nvidia_cutlass_dsl/python_packages${PYTHONPATH:+:$PYTHONPATH}
    fi
    # BENCH_SETS="configs@tokens ...": one benchmark run per set (configs x tokens within a set),
    # each peer script stopped after PEER_TIMEOUT seconds; the JSON of all sets merged.
    SETS=${BENCH_SETS:-"${BENCH_CONFIGS:-sonic-7b,qwen3-30b-a3b,olmoe-1b-7b,mixtral-8x7b,deepseek-v3}@${BENCH_TOKENS:-24576}"}
    i=0
    for set in $SETS; do
      i=$((i + 1))
      start=$SECONDS
      PYTHONUNBUFFERED=1 $B ${BENCH_ARGS:-} --configs "${set%@*}" --tokens "${set##*@}" --json "$OUT/bench_$i.json" \
        --dump /tmp/bench_inputs_$i --python "timeout ${PEER_TIMEOUT:-400} python3" "${PEERS[@]}" > "$OUT/bench_$i.log" 2>&1
      note "bench $set rc=$? ($((SECONDS - start)) s)"
      sed -n '/^config  *T  *variant/,/^$/p' "$OUT/bench_$i.log"
      rm -rf /tmp/bench_inputs_$i
    done
    python3 - "$OUT" $i <<'PY'
import json, sys
out, n = sys.argv[1], int(sys.argv[2])
merged = None
for i in range(1, n + 1):
    try:
        d = json.load(open(f"{out}/bench_{i}.json"))
    except (OSError, ValueError):
        continue
    if merged is None:
        merged = d
    else:
        merged["results"] += d["results"]
if merged:
    json.dump(merged, open(f"{out}/bench.json", "w"), indent=1)
PY
    rm -f "$OUT"/bench_[0-9]*.json
  fi
fi
if has example; then
  E=$BUILD/bin
  for p in grouped_gemm_naive grouped_gemm; do
    if [ -x $E/$p ]; then
      $E/$p --experts 128 --tokens 24576 --d 1536 --n 256 --topk 8 > "$OUT/example_$p.log" 2>&1
      note "example $p rc=$?: $(tail -2 "$OUT/example_$p.log" | tr '\n' ' ')"
    fi
  done
  for p in io_overlap optimized_moe_layer; do
    if [ -x $E/$p ]; then
      $E/$p > "$OUT/example_$p.log" 2>&1
      note "example $p rc=$?: $(tail -2 "$OUT/example_$p.log" | tr '\n' ' ')"
      cat "$OUT/example_$p.log"
    fi
  done
  if [ -x $E/tilemoe ]; then
    $E/tilemoe demo > "$OUT/demo.log" 2>&1
    note "tilemoe demo rc=$?"
    cat "$OUT/demo.log"
  fi
fi
if has profile; then
  # Nsight Compute on one fused forward's expert GEMMs (the second forward, after a warm-up):
  # speed-of-light and memory sections, to see whether L2, DRAM or the tensor pipes bound them.
  ncu --section SpeedOfLight --section MemoryWorkloadAnalysis --kernel-name regex:grouped \
    --launch-skip 2 --launch-count 2 $BUILD/bin/tilemoe run --config "${PROFILE_CONFIG:-qwen3-30b-a3b}" \
    --tokens "${PROFILE_TOKENS:-16384}" --algorithm fused --device cuda --repeats 1 > "$OUT/profile.log" 2>&1
  note "profile rc=$? (${PROFILE_CONFIG:-qwen3-30b-a3b}, T ${PROFILE_TOKENS:-16384})"
  grep -E "grouped_|Throughput|Duration|Busy|Hit Rate" "$OUT/profile.log" | head -60
fi
(cd "$OUT" && tar czf logs.tgz --exclude=logs.tgz *.log 2>/dev/null && rm -f cmake.log build.log tests_cpu.log bench_*.log sonic_install.log)
echo
echo "==================== summary ===================="
cat "$OUT/card.txt"
for s in "${SUMMARY[@]}"; do echo "$s"; done
