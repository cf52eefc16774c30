#!/usr/bin/env bash
# one-off (untracked): run 124 on main: tests of the changed paths, combine A/B, the issue's layers with every peer
scripts/gpu_check.sh build
start=$SECONDS
timeout 200 build/tests/tilemoe_tests_gpu --gtest_brief=1 --gtest_filter='GpuCombine.*:GpuForward.FusedBf16ShapeMatrix:GpuForward.FusedMatchesGroupedOnLargeInputs:GpuForward.GroupedBf16ShapeMatrix:GpuGraph.*:GpuRounding.*' > $OUT/tests_gpu.log 2>&1
echo "== tests rc=$? ($((SECONDS - start)) s): $(grep -E '^\[  (PASSED|FAILED)' $OUT/tests_gpu.log | tr '\n' ' ')"
grep -E "Failure|FAILED|Expected|Which is|seed=" $OUT/tests_gpu.log | head -20
AB_CONFIGS="sonic-7b:d4096:n512@32768,qwen3-30b-a3b@16384,olmoe-1b-7b@16384" AB_VARIANTS=fused AB_ENVS="base;TILEMOE_COMBINE_GROUP8=0;base;TILEMOE_COMBINE_GROUP8=0" scripts/gpu_check.sh ab > $OUT/ab_run.log 2>&1
grep "combine" $OUT/ab_run.log
BENCH_SETS=issue BENCH_PEERS="torch scattermoe sonicmoe" scripts/gpu_check.sh bench
