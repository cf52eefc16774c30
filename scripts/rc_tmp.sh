export OUT; bash scripts/gpu_check.sh build > /dev/null 2>&1; T=build/tests/tilemoe_tests_gpu
run() { local name=$1 filt=$2; shift 2; env "$@" TILEMOE_SANITIZE=1 timeout 150 compute-sanitizer --tool racecheck --error-exitcode 9 $T --gtest_brief=1 --gtest_filter=$filt > $OUT/rc_$name.log 2>&1; echo "$name rc=$? $(grep -E 'RACECHECK SUMMARY' $OUT/rc_$name.log) $(grep -E '^\[  (PASSED|FAILED)' $OUT/rc_$name.log | tr '\n' ' ')"; }
P=GpuForward.DecodePairLaunchMatchesTwoLaunches
run d0 $P TILEMOE_WS_PAIR_DEBUG=0
run d32 $P TILEMOE_WS_PAIR_DEBUG=32
run m_pair GpuForward.FusedBf16ShapeMatrix TILEMOE_WS_PAIR=1
timeout 200 $T --gtest_brief=1 > $OUT/tests.log 2>&1; echo "tests rc=$? $(grep -E '^\[  (PASSED|FAILED)' $OUT/tests.log | tr '\n' ' ')"
AB_ENVS="TILEMOE_WS_PAIR=0;base;TILEMOE_WS_PAIR=0;base" AB_CONFIGS="qwen3-30b-a3b@64,qwen3-30b-a3b@256,olmoe-1b-7b@64,olmoe-1b-7b@256" AB_VARIANTS="fused,fused_graph" bash scripts/gpu_check.sh ab 2>&1 | grep -E "ab \[|fused" | head -40
