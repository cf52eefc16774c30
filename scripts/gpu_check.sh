#!/usr/bin/env bash
# One call on the GPU machine: build, GPU tests, compute-sanitizer, benchmark, example.
# Usage: scripts/gpu_check.sh [build] [tests] [sanitize] [bench] [example] [ab] [clocks] [kernels] [profile]
#        [profile_sonic] (default: all but ab, clocks, kernels and the two profiles)
# Logs go to $OUT (or ./gpu_out); a short summary table is printed last.
# bench: BENCH_SETS="cfg[@T],cfg[@T]...@T ..." (one benchmark run per set; default BENCH_CONFIGS
# at BENCH_TOKENS; the words issue, decode and rounding name the usual sets), BENCH_ARGS (more
# flags), BENCH_PEERS="torch scattermoe sonicmoe" (those whose code travelled: scripts/peers.sh),
# PEER_TIMEOUT (seconds per peer script, default 400); TILEMOE_PEER_KERNELS=1 has each peer print
# its kernels' times per forward (torch.profiler, warm L2) into the bench log; the peers' totals
# of such a run are not for tables (from the second layer on, each was timed in a process that had
# loaded the profiler; docs/gpu_runs.md run 123).
# profile / profile_sonic: Nsight Compute on our expert GEMMs and cuBLAS's, or on SonicMoE's, one
# layer (PROFILE_CONFIG, default qwen3-30b-a3b@16384): the same sections and stall metrics.
# tests: the GPU tests stopped after TEST_TIMEOUT seconds (default 300).
# tests, sanitize: also rerun the fast-path tests under each setting of TEST_ENVS ("A=1 B=2;C=3"),
# each stopped after ENV_TEST_TIMEOUT seconds (default 150: a mode that hangs costs that, not
# the call); a setting whose tests failed or timed out is not run under the sanitizers, nor
# under the next tools once one timed out (ENV_SANITIZE_TIMEOUT seconds, default 300).
# SANITIZE_TOOLS="" skips the full sanitizer runs (the TEST_ENVS ones still run).
# ab: the fused layer's stage medians under each setting of AB_ENVS ("base" = none; "old" runs
# .old/bench_moe_variants, an older commit's build carried along; a trailing "args:--flag value"
# passes benchmark flags too, e.g. "TILEMOE_X=1 args:--stages") on AB_CONFIGS (config@T entries,
# comma-separated, one token count each: "qwen3-30b-a3b@64,qwen3-30b-a3b@256", not
# "qwen3-30b-a3b@64,256", which BENCH_SETS takes),
# an A/B of kernel variants chosen by environment variables, all in one run on one card
# (AB_VARIANTS: the benchmark's variants, default fused,dense_cublas); each entry stopped after
# AB_TIMEOUT seconds (default 300), and not run again in the call once it has been.
# BUILD_DIR: the build to run (default build/, which the build step makes); without the build
# step, a folder of binaries built elsewhere (tests/ and bin/: scripts/prebuild.sh builds them,
# scripts/gpu_prebuilt.sh unpacks them and sets it, so that a call spends no device time compiling).
# CALL_BUDGET: the seconds this script may take in all (default 560: the device tool stops a call
# at 600 s, and then the summary below would be lost); each step's time limit is cut to what is
# left, and a step that would start with less than a minute left is skipped with a summary line.
set -u
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
STEPS=${*:-build tests sanitize bench example}
has() { [[ " $STEPS " == *" $1 "* ]]; }
SUMMARY=()
FAILED_ENVS=()  # TEST_ENVS settings whose tests failed: the sanitizers skip them
env_failed() { local f; for f in "${FAILED_ENVS[@]}"; do [ "$f" == "$1" ] && return 0; done; return 1; }
note() { SUMMARY+=("$1"); echo "== $1"; }
CALL_BUDGET=${CALL_BUDGET:-560}
# within T: T seconds, or what is left of the budget where that is less (at least 1).
within() { local t=$1 l=$((CALL_BUDGET - SECONDS)); ((l < t)) && t=$l; ((t < 1)) && t=1; echo $t; }
# spent NAME: true (and a summary line) when less than a minute of the budget is left for NAME.
spent() {
  ((CALL_BUDGET - SECONDS >= 60)) && return 1
  note "$1 skipped: $((CALL_BUDGET - SECONDS)) s left of CALL_BUDGET=$CALL_BUDGET"
}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# The commit the benchmarks name: a .commit file carried along (git-ignored: `git rev-parse --short
# HEAD > .commit`, then carry .commit), else git's where the copy has it (the copy's git named an
# older commit than the code that ran in run 128: carry .commit).
export TILEMOE_COMMIT=${TILEMOE_COMMIT:-$(cat .commit 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)}

# SonicMoE where its packages travelled in .sonic/ (git-ignored; carried): site.tar.xz, the
# unpacked sonic-moe, quack-kernels and nvidia-cutlass-dsl wheels, and the small wheels of their
# other needs (scripts/peers.sh makes both folders). SonicMoE's GEMMs (QuACK) autotune on first
# use, compiling every candidate configuration (most of a call's minutes on gpt-oss-120b and
# Mixtral): on all 16 cores, into QuACK's object cache, which comes back as
# $OUT/quack_cache.tar.xz and, kept in .sonic/, is unpacked again by the next call (run 70: 374 s
# for those two layers without it). Returns non-zero where SonicMoE cannot run.
SONIC_READY=
sonic_setup() {
  [ -n "$SONIC_READY" ] && return 0
  [ -f .sonic/site.tar.xz ] || return 1
  rm -rf /tmp/sonic_site && mkdir -p /tmp/sonic_site && timeout $(within 300) tar -xJf .sonic/site.tar.xz -C /tmp/sonic_site &&
    timeout $(within 300) python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/sonic_site .sonic/*.whl \
      > "$OUT/sonic_install.log" 2>&1 || return 1
  export PYTHONPATH=/tmp/sonic_site:/tmp/sonic_site/nvidia_cutlass_dsl/python_packages${PYTHONPATH:+:$PYTHONPATH}
  export QUACK_COMPILE_WORKERS=${QUACK_COMPILE_WORKERS:-16} QUACK_CACHE_DIR=/tmp/qc
  mkdir -p /tmp/qc && [ -f .sonic/quack_cache.tar.xz ] && timeout $(within 300) tar -xJf .sonic/quack_cache.tar.xz -C /tmp
  SONIC_READY=1
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/card.txt"
BUILD=${BUILD_DIR:-build}
if has build && [ -f "$BUILD/COMMIT" ]; then
  note "build skipped: $BUILD holds binaries built elsewhere (scripts/prebuild.sh, commit $(cat "$BUILD/COMMIT"))"
elif has build; then
  start=$SECONDS
  cmake -S . -B $BUILD -G Ninja -DTILEMOE_CUDA=ON > "$OUT/cmake.log" 2>&1 &&
    timeout $(within 100000) ninja -C $BUILD -j16 -k 0 ${BUILD_TARGETS:-} > "$OUT/build.log" 2>&1
  rc=$?
  note "build rc=$rc ($((SECONDS - start)) s)"
  if [ $rc -ne 0 ]; then grep -E "error|FAILED" -A3 "$OUT/build.log" | head -60; fi
fi
T=$BUILD/tests/tilemoe_tests_gpu
if has tests && ! spent tests; then
  start=$SECONDS
  timeout $(within ${TEST_TIMEOUT:-300}) $T --gtest_brief=1 > "$OUT/tests_gpu.log" 2>&1
  rc=$?
  note "tests_gpu rc=$rc ($((SECONDS - start)) s): $(grep -E '^\[  (PASSED|FAILED)' "$OUT/tests_gpu.log" | tr '\n' ' ')"
  grep -E "Failure|FAILED|error|Expected|Which is|seed=|actual" "$OUT/tests_gpu.log" | head -60
  F_FAST='GpuForward.FusedBf16ShapeMatrix:GpuForward.FusedMatchesGroupedOnLargeInputs:GpuGroupedGemm.*:GpuRounding.ForwardWithRoundingMatchesReference:GpuGraph.*'
  IFS=';' read -ra ENVS <<< "${TEST_ENVS:-}"
  for e in "${ENVS[@]}"; do
    [ -z "$e" ] && continue
    if spent "tests_gpu [$e]"; then FAILED_ENVS+=("$e"); continue; fi  # (nor its sanitizers)
    start=$SECONDS
    env $e timeout $(within ${ENV_TEST_TIMEOUT:-150}) $T --gtest_brief=1 --gtest_filter="$F_FAST" > "$OUT/tests_gpu_env.log" 2>&1
    rc=$?
    [ $rc -ne 0 ] && FAILED_ENVS+=("$e")
    note "tests_gpu [$e] rc=$rc ($((SECONDS - start)) s): $(grep -E '^\[  (PASSED|FAILED)' "$OUT/tests_gpu_env.log" | tr '\n' ' ')"
    grep -E "Failure|FAILED|Expected|Which is|seed=|actual" "$OUT/tests_gpu_env.log" | head -30
    cat "$OUT/tests_gpu_env.log" >> "$OUT/tests_gpu_envs.log"
  done
  rm -f "$OUT/tests_gpu_env.log"
  if [ ! -x $BUILD/tests/tilemoe_tests_cpu ]; then
    note "tests_cpu: not in $BUILD"
  elif ! spent tests_cpu; then
    timeout $(within 300) $BUILD/tests/tilemoe_tests_cpu --gtest_brief=1 > "$OUT/tests_cpu.log" 2>&1
    note "tests_cpu rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/tests_cpu.log" | tr '\n' ' ')"
  fi
fi
if has sanitize; then
  # Small cases only (TILEMOE_SANITIZE=1 in the tests); the 131072-token and 22 GB DeepSeek-V3
  # runs and the fp32 cuBLAS matrix are left to the plain run. racecheck is far slower than
  # memcheck, so it takes the suites whose kernels use shared memory, minus the graph replays.
  F_MEM='-GpuForward.LargeTokenCounts:GpuForward.DeepSeekV3SizedLayer:GpuForward.SequentialFp32ShapeMatrix'
  F_RACE='GpuRouter.*:GpuMetadata.*:GpuCombine.*:GpuGroupedGemm.*:GpuRounding.MatchesCpuRoundRouting'
  F_RACE+=':GpuForward.OneExpertTakesEveryToken:GpuForward.DecodePairLaunchMatchesTwoLaunches'
  for tool in ${SANITIZE_TOOLS-memcheck racecheck synccheck}; do
    spent "sanitizer $tool" && continue
    start=$SECONDS
    F=$F_MEM; [ $tool != memcheck ] && F=$F_RACE
    TILEMOE_SANITIZE=1 timeout $(within 420) compute-sanitizer --tool $tool --error-exitcode 9 $T --gtest_brief=1 --gtest_filter="$F" \
      > "$OUT/sanitize_$tool.log" 2>&1
    rc=$?
    note "sanitizer $tool rc=$rc ($((SECONDS - start)) s): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitize_$tool.log" | tail -1) $(grep -E '^\[  (PASSED|FAILED)' "$OUT/sanitize_$tool.log" | tr '\n' ' ')"
    grep -E "^=========  *(Invalid|Race|Error)" "$OUT/sanitize_$tool.log" | sort | uniq -c | head -10
  done
  IFS=';' read -ra ENVS <<< "${TEST_ENVS:-}"
  for e in "${ENVS[@]}"; do
    [ -z "$e" ] && continue
    if env_failed "$e"; then note "sanitizers [$e] skipped: its tests failed, timed out or did not run"; continue; fi
    for tool in memcheck racecheck synccheck; do
      spent "sanitizer $tool [$e]" && continue
      start=$SECONDS
      env $e TILEMOE_SANITIZE=1 timeout $(within ${ENV_SANITIZE_TIMEOUT:-300}) compute-sanitizer --tool $tool --error-exitcode 9 $T --gtest_brief=1 \
        --gtest_filter='GpuForward.FusedBf16ShapeMatrix:GpuGroupedGemm.FusedKernelsManyTilesPerBlock' > "$OUT/sanitize_env.log" 2>&1
      rc=$?
      note "sanitizer $tool [$e] rc=$rc ($((SECONDS - start)) s): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitize_env.log" | tail -1)"
      grep -E "^=========  *(Invalid|Race|Error)" "$OUT/sanitize_env.log" | sort | uniq -c | head -10
      cat "$OUT/sanitize_env.log" >> "$OUT/sanitize_envs.log"
      if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then note "sanitizers [$e]: $tool timed out, the rest skipped"; break; fi
    done
  done
  rm -f "$OUT/sanitize_env.log"
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
    # SonicMoE where its packages travelled (sonic_setup, above).
    if [[ $WANT == *" sonicmoe "* ]] && sonic_setup; then
      PEERS+=(--sonicmoe benchmarks/peers/sonicmoe_pipeline.py)
    fi
    # BENCH_SETS="configs@tokens ...": one benchmark run per set (configs x tokens within a set),
    # each peer script stopped after PEER_TIMEOUT seconds; the JSON of all sets merged.
    SETS=${BENCH_SETS:-"${BENCH_CONFIGS:-sonic-7b,qwen3-30b-a3b,olmoe-1b-7b,mixtral-8x7b,deepseek-v3}@${BENCH_TOKENS:-24576}"}
    # Named sets: issue (issue 6's seven layers at their token counts), issue1 and issue2 (its
    # first five and its last two, gpt-oss-120b and Mixtral: one call each, so that SonicMoE's
    # compiles on the last two get a time limit of their own; run 143 lost them at 380 s),
    # decode (T 64 and 256), rounding (K/E = 1/64).
    SETS=${SETS//issue1/sonic-7b@24576,sonic-7b:d4096:n512@32768,sonic-7b:d4096:n1024@32768,qwen3-30b-a3b@16384,olmoe-1b-7b@16384@24576}
    SETS=${SETS//issue2/gpt-oss-120b@8192,mixtral-8x7b@4096@8192}
    SETS=${SETS//issue/sonic-7b@24576,sonic-7b:d4096:n512@32768,sonic-7b:d4096:n1024@32768,qwen3-30b-a3b@16384,olmoe-1b-7b@16384,gpt-oss-120b@8192,mixtral-8x7b@4096@24576}
    SETS=${SETS//decode/qwen3-30b-a3b,olmoe-1b-7b,deepseek-v3@64,256}
    SETS=${SETS//rounding/sonic-7b:E256:K4,sonic-7b:E512:K8@4096,24576}
    i=0
    for set in $SETS; do
      spent "bench $set" && continue
      i=$((i + 1))
      start=$SECONDS
      PYTHONUNBUFFERED=1 timeout $(within 100000) $B ${BENCH_ARGS:-} --configs "${set%@*}" --tokens "${set##*@}" --json "$OUT/bench_$i.json" \
        --dump /tmp/bench_inputs_$i --python "timeout $(within ${PEER_TIMEOUT:-400}) python3" "${PEERS[@]}" > "$OUT/bench_$i.log" 2>&1
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
    [ -d /tmp/qc ] && (cd /tmp && timeout $(within 120) tar cJf "$OUT/quack_cache.tar.xz" qc)
  fi
fi
if has example && ! spent example; then
  E=$BUILD/bin
  for p in grouped_gemm_naive grouped_gemm; do
    if [ -x $E/$p ]; then
      timeout $(within 120) $E/$p --experts 128 --tokens 24576 --d 1536 --n 256 --topk 8 > "$OUT/example_$p.log" 2>&1
      note "example $p rc=$?: $(tail -2 "$OUT/example_$p.log" | tr '\n' ' ')"
    fi
  done
  for p in io_overlap optimized_moe_layer; do
    if [ -x $E/$p ]; then
      timeout $(within 120) $E/$p > "$OUT/example_$p.log" 2>&1
      note "example $p rc=$?: $(tail -2 "$OUT/example_$p.log" | tr '\n' ' ')"
      cat "$OUT/example_$p.log"
    fi
  done
  if [ -x $E/tilemoe ]; then
    timeout $(within 300) $E/tilemoe demo > "$OUT/demo.log" 2>&1
    note "tilemoe demo rc=$?"
    cat "$OUT/demo.log"
  fi
fi
if has ab; then
  IFS=';' read -ra ENVS <<< "${AB_ENVS:-base}"
  HUNG=()  # entries that ran past AB_TIMEOUT: their repeats later in AB_ENVS are skipped
  for e in "${ENVS[@]}"; do
    skip=
    for h in "${HUNG[@]}"; do [ "$h" == "$e" ] && skip=1; done
    if [ -n "$skip" ]; then note "ab [$e] skipped: it timed out before"; continue; fi
    spent "ab [$e]" && continue
    start=$SECONDS
    # "[ENV=1 ...|base|old] [args:--flag value ...]": an environment, then benchmark flags
    ev=$e args=
    [[ $e == *args:* ]] && args=${e#*args:} ev=${e%%args:*}
    ev=$(echo $ev)  # trimmed
    B=$BUILD/bin/bench_moe_variants
    [ "$ev" = old ] && B=.old/bench_moe_variants  # an older build, carried
    [[ $ev = base || $ev = old ]] && ev=
    env $ev timeout $(within ${AB_TIMEOUT:-300}) $B $args --configs "${AB_CONFIGS:-sonic-7b@24576,qwen3-30b-a3b@16384,mixtral-8x7b@4096}" --no-sequential \
      --variants "${AB_VARIANTS:-fused,dense_cublas}" > "$OUT/ab.log" 2>&1
    rc=$?
    note "ab [$e] rc=$rc ($((SECONDS - start)) s)"
    [[ $rc -eq 124 || $rc -eq 137 ]] && HUNG+=("$e")
    grep -E "^  fused:|up_projection|host:|T=.*(grouped|fused|fused_graph|dense_cublas) |^  stage " "$OUT/ab.log" | grep -v "^  fused:" | sed 's/^ */  /'
    { echo "=== $e"; cat "$OUT/ab.log"; } >> "$OUT/ab_all.log"
  done
  rm -f "$OUT/ab.log"
fi
if has clocks; then
  # SM clock and power while each of CLOCK_VARIANTS (default: the fused layer, then cuBLAS's dense
  # pair) runs back to back (CLOCK_CONFIG, 200 reps each): nvidia-smi samples every 20 ms, those
  # above 300 W (under load) summarized. Whether a kernel is held back by the power limit shows as
  # a lower clock.
  B=$BUILD/bin/bench_moe_variants
  for v in ${CLOCK_VARIANTS:-fused dense_cublas}; do
    spent "clocks $v" && continue
    nvidia-smi --query-gpu=clocks.sm,power.draw --format=csv,noheader,nounits -lms 20 > "$OUT/clocks_$v.csv" &
    smi=$!
    timeout $(within 300) $B --configs "${CLOCK_CONFIG:-mixtral-8x7b@4096}" --variants $v --reps 200 > "$OUT/clocks_$v.log" 2>&1
    kill $smi; wait $smi 2>/dev/null
    note "clocks $v ${CLOCK_CONFIG:-mixtral-8x7b@4096}: $(python3 - "$OUT/clocks_$v.csv" <<'PY'
import sys, statistics
rows = []
for line in open(sys.argv[1]):
    try:
        c, p = (float(x) for x in line.split(","))
        rows.append((c, p))
    except ValueError:
        pass
busy = [r for r in rows if r[1] > 300]
if not busy:
    print("no sample above 300 W"); sys.exit()
print(f"{len(busy)} busy samples: SM clock median {statistics.median(r[0] for r in busy):.0f} MHz "
      f"(min {min(r[0] for r in busy):.0f}), power median {statistics.median(r[1] for r in busy):.0f} W")
PY
) $(grep -E "T=.* $v " "$OUT/clocks_$v.log" | head -1 | sed 's/  */ /g')"
  done
fi
if has kernels; then
  # Every kernel of a few forwards under Nsight Compute (each kernel serialized: no launch gaps,
  # no overlap; clocks at the profiler's base): its duration, DRAM bytes read and DRAM throughput
  # (% of peak): where a stage's time goes, kernel by kernel, and whether it streams memory at
  # the card's rate. KERNELS_CONFIG (comma list of the benchmark's config@T), KERNELS_VARIANTS
  # (default fused and fused+rounding; one timed forward each plus one for the stage times),
  # NCU_ARGS (more profiler flags: "--clock-control none --cache-control none" for the card's own
  # clocks and warm caches), KERNELS_ARGS (more benchmark flags, e.g. "--router-dtype bf16").
  # One table per entry of KERNELS_CONFIG (space-separated); the CSVs go to $OUT/kernels.tar.gz.
  KDIR=$(mktemp -d)
  # An entry "config@T/variants" names its own variants.
  for entry in ${KERNELS_CONFIG:-sonic-7b:E256:K4@24576}; do
  kc=${entry%%/*}; kv=${KERNELS_VARIANTS:-fused,fused+rounding}; [[ $entry == */* ]] && kv=${entry#*/}
  spent "kernels $kc" && continue
  timeout $(within 100000) ncu ${NCU_ARGS:-} --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed --csv \
    $BUILD/bin/bench_moe_variants ${KERNELS_ARGS:-} --configs "$kc" --no-sequential \
    --variants "$kv" --reps 1 --warmup 0 > "$KDIR/$kc.csv" 2>> "$OUT/kernels.log"
  note "kernels rc=$? ($kc, $kv)"
  python3 - "$KDIR/$kc.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1], errors="replace")) if len(r) > 14]
head = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
if head is None:
    print("  (no kernel rows)"); sys.exit()
h = rows[head]
ident, name = h.index("ID"), h.index("Kernel Name")
metric, unit, value = h.index("Metric Name"), h.index("Metric Unit"), h.index("Metric Value")
scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6, "ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6,
         "byte": 1e-6, "Kbyte": 1e-3, "Mbyte": 1.0, "Gbyte": 1e3, "KB": 1e-3, "MB": 1.0, "GB": 1e3, "%": 1.0}
launch = collections.OrderedDict()  # launch id -> (kernel, {metric: value})
for r in rows[head + 1:]:
    try:
        v = float(r[value].replace(",", "")) * scale.get(r[unit], float("nan"))
    except ValueError:
        continue
    launch.setdefault(r[ident], (r[name].split("(")[0][:64], {}))[1][r[metric].split(".")[0]] = v
per = collections.OrderedDict()
for k, m in launch.values():
    per.setdefault(k, []).append(m)
print(f"  {'kernel':64s} {'count':>5s} {'total us':>9s} {'mean us':>8s} {'DRAM MB':>8s} {'DRAM %':>6s}")
for k, ms in sorted(per.items(), key=lambda kv: -sum(m.get("gpu__time_duration", 0) for m in kv[1]))[:40]:
    us = [m.get("gpu__time_duration", 0) for m in ms]
    mb = sum(m.get("dram__bytes_read", 0) for m in ms) / len(ms)
    pct = sum(m.get("dram__throughput", 0) * u for m, u in zip(ms, us)) / max(sum(us), 1e-9)
    print(f"  {k:64s} {len(ms):5d} {sum(us):9.1f} {sum(us) / len(us):8.1f} {mb:8.1f} {pct:6.1f}")
PY
  done
  tar -czf "$OUT/kernels.tar.gz" -C "$KDIR" .
fi
# The profile steps' summary of an ncu log: per kernel its clock, duration, throughputs, and the
# warps' stall reasons above 0.2 cycles per issued instruction.
profile_summary() {
  grep -E "Context [0-9]+, Stream|SM Frequency|Duration|Compute \(SM\) Throughput|L2 Cache Throughput|DRAM Throughput|L1/TEX Hit|L2 Hit Rate|hmma_cycles|srcunit_tex_op_read|Memory Throughput|Warp Cycles Per Issued" "$1" | head -${PROFILE_LINES:-150}
  awk '/Context [0-9]+, Stream/ {print "  " substr($0, 1, 90)} /issue_stalled_.*per_issue_active/ && $NF + 0 >= 0.2 {sub(/smsp__average_warps_issue_stalled_/, "", $1); sub(/_per_issue_active.ratio/, "", $1); printf "      %-22s %s\n", $1, $NF}' "$1" | head -${PROFILE_LINES:-150}
}
NCU_METRICS=sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,lts__t_sectors_srcunit_tex_op_read.sum.per_second,regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio
if has profile && ! spent profile; then
  # Nsight Compute on the fused layer's expert GEMMs and cuBLAS's dense GEMMs of the same FLOPs
  # (bench_moe_variants, one timed run each): speed of light, memory workload, SM clock; whether
  # L2, DRAM or the tensor pipes bound them. cuBLAS's kernel names tell its tile and cluster.
  # The benchmark's first forward (its routing dump) runs the `grouped` algorithm: its router
  # GEMM (T > 512), up- and (K >= 512) down-projection match the regex first: PROFILE_SKIP=3 on
  # large layers (one fewer for each of those that is absent) reaches the fused forward's kernels.
  # (At T 64-256 the router is the small kernel and the up-projection's wgmma kernel matches: 2.)
  SECTIONS=()
  for sec in ${PROFILE_SECTIONS:-SpeedOfLight MemoryWorkloadAnalysis ComputeWorkloadAnalysis}; do SECTIONS+=(--section "$sec"); done
  # The warps' stall reasons (cycles per issued instruction) come with every profiled kernel;
  # PROFILE_SOURCE=1 also keeps the report and prints the SASS lines with the most stall samples.
  REP=(); [ "${PROFILE_SOURCE:-0}" = 1 ] && REP=(--section SourceCounters --import-source no -f -o "$OUT/profile")
  timeout $(within 100000) ncu "${SECTIONS[@]}" "${REP[@]}" \
    --metrics $NCU_METRICS \
    --kernel-name regex:"${PROFILE_KERNELS:-ws_kernel|wgmma_kernel|nvjet|xmma|gemm}" --launch-skip "${PROFILE_SKIP:-0}" --launch-count "${PROFILE_COUNT:-24}" \
    $BUILD/bin/bench_moe_variants --configs "${PROFILE_CONFIG:-qwen3-30b-a3b@16384}" --no-sequential --variants "${PROFILE_VARIANTS:-fused,dense_cublas}" \
    --reps 1 --warmup 0 > "$OUT/profile.log" 2>&1
  note "profile rc=$? (${PROFILE_CONFIG:-qwen3-30b-a3b@16384})"
  if [ -f "$OUT/profile.ncu-rep" ]; then  # with a report, the metrics are read back from it
    timeout $(within 120) ncu -i "$OUT/profile.ncu-rep" --page details >> "$OUT/profile.log" 2>&1
    timeout $(within 120) ncu -i "$OUT/profile.ncu-rep" --page source --csv --print-source sass > "$OUT/profile_sass.csv" 2>&1
  fi
  profile_summary "$OUT/profile.log"
  if [ -s "$OUT/profile_sass.csv" ]; then
    python3 - "$OUT/profile_sass.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1], errors="replace")))
head = next((i for i, r in enumerate(rows) if any("Stall Sampling" in c for c in r)), None)
if head is None:
    print("  (no stall-sampling column in the source page)"); sys.exit()
h = rows[head]
col = next(i for i, c in enumerate(h) if "Stall Sampling (All" in c)
src = next((i for i, c in enumerate(h) if c.strip().lower() == "source"), 1)
body = [r for r in rows[head + 1:] if len(r) > col]
def num(x):
    try: return float(x.replace(",", ""))
    except ValueError: return 0.0
total = sum(num(r[col]) for r in body) or 1.0
print(f"  top SASS lines by stall samples (of {int(total)}):")
order = sorted(range(len(body)), key=lambda i: -num(body[i][col]))
for i in order[:30]:
    r = body[i]
    print(f"    {100 * num(r[col]) / total:5.1f}%  {r[src][:110]}")
    # A spin loop's branch: the wait it belongs to (the barrier's address shows which one).
    if "BRA" in r[src] and num(r[col]) / total >= 0.02:
        for j in range(max(0, i - 12), i):
            if "SYNCS" in body[j][src] or "BAR" in body[j][src]:
                print(f"             after: {body[j][src][:100]}")
PY
  fi
fi
if has profile_sonic && ! spent profile_sonic; then
  # The same profile of SonicMoE's expert GEMMs (QuACK) on the same layer's inputs, to set beside
  # ours (`profile`): the benchmark dumps the inputs, then ncu runs the SonicMoE peer script on
  # them. Its first forward (the check, general routing) launches its up- and down-projection
  # once before the timed path's: SONIC_PROFILE_SKIP (default 2) passes over them.
  cfg=${PROFILE_CONFIG:-qwen3-30b-a3b@16384}
  rm -rf /tmp/prof_in
  if sonic_setup && timeout $(within 300) $BUILD/bin/bench_moe_variants --configs "$cfg" --no-sequential --variants fused --reps 1 --warmup 0 \
       --dump /tmp/prof_in > "$OUT/profile_sonic_dump.log" 2>&1; then
    SECTIONS=()
    for sec in ${PROFILE_SECTIONS:-SpeedOfLight MemoryWorkloadAnalysis ComputeWorkloadAnalysis}; do SECTIONS+=(--section "$sec"); done
    timeout $(within ${PEER_TIMEOUT:-400}) ncu "${SECTIONS[@]}" --metrics $NCU_METRICS --kernel-name regex:"${SONIC_PROFILE_KERNELS:-quackgemm}" \
      --launch-skip "${SONIC_PROFILE_SKIP:-2}" --launch-count "${SONIC_PROFILE_COUNT:-2}" \
      python3 benchmarks/peers/sonicmoe_pipeline.py /tmp/prof_in/* > "$OUT/profile_sonic.log" 2>&1
    note "profile_sonic rc=$? ($cfg)"
    profile_summary "$OUT/profile_sonic.log"
  else
    note "profile_sonic: SonicMoE or the inputs' dump missing (.sonic/ carried? $OUT/profile_sonic_dump.log)"
  fi
  rm -rf /tmp/prof_in
fi
(cd "$OUT" && tar czf logs.tgz --exclude=logs.tgz *.log 2>/dev/null && rm -f cmake.log build.log tests_cpu.log bench_*.log sonic_install.log)
echo
echo "==================== summary ===================="
cat "$OUT/card.txt"
for s in "${SUMMARY[@]}"; do echo "$s"; done
