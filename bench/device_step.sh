#!/usr/bin/env bash
# One call on the GPU machine for the training step (issue 24): build, the main job's
# reference-model rows, the backward of both ops, the sparse-gradient and optimiser
# tests on CUDA, a profile of the training step. Short summary printed last.
#   bash bench/device_step.sh    (ENV: TARGETS=1 (issue 27's T = 1024 op rows), SWEEP=1 (the CUDA many-targets kernel over k, G, selection), NCU_TARGETS=1 (ncu of it, G = 8, d = NCU_D or 32), SKIP_BENCH=1, TEST_FILES=..., SKIP_TESTS=1, TEST_GROUPS='k1;k2' (side by side), PROFILE=0, PROFILE_SERVING=1 (a request's kernels, T = 1 and 1024), BACKWARD=0, BACKWARD_AB=1, SERVING=1, FUXICTR=1 (carry .fx), BENCH_D="16 128", BENCH_MODELS="twin:128 dare:16", BENCH_ARGS=...)
set -uo pipefail
source "$(dirname "$0")/device_setup.sh"
if [ "${TARGETS:-0}" = 1 ]; then
  # Issue 27's op rows: one history (B = 1, L = 10k) against T = 1024 targets, each backend,
  # then the Triton backend with its many-targets path off (DARE_TRITON_TARGETS=0), for the A/B.
  for targets in 1 0; do
    DARE_TRITON_TARGETS=$targets TQDM_DISABLE=1 timeout 150 python3 -m dare_kernels.bench --B 1 --T 1024 --d 16 32 128 \
      --backends $([ $targets = 1 ] && echo "bmm+topk cuda triton" || echo triton) --no-model --no-ids --no-serving \
      --json "$OUT/targets-$targets.json" > "$OUT/targets-$targets.txt" 2>&1
    echo "targets (DARE_TRITON_TARGETS=$targets) rc=$?" | tee -a "$OUT/summary.txt"; grep -E "^\| (bmm|cuda|triton)" "$OUT/targets-$targets.txt"
  done
fi
if [ "${SWEEP:-0}" = 1 ]; then
  timeout ${SWEEP_TIMEOUT:-200} python3 bench/tools/targets_sweep.py ${SWEEP_ARGS:-} > "$OUT/targets_sweep.txt" 2>&1
  echo "sweep rc=$?" | tee -a "$OUT/summary.txt"; cat "$OUT/targets_sweep.txt"
fi
if [ "${NCU_TARGETS:-0}" = 1 ]; then
  # ncu of the many-targets kernel at the serving shape (B = 1, T = 1024, L = 10k, bf16), G = 8, d = 32,
  # k = 1 (scoring and the stream's filter) and k = 128: where its time goes.
  for k in 1 128; do
    DARE_CUDA_TARGETS=8 timeout 90 ncu --clock-control none -k regex:targets_kernel --launch-skip 3 --launch-count 1 \
      --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats \
      --section MemoryWorkloadAnalysis --section InstructionStats --section SchedulerStats \
      python3 bench/tools/profile_cuda.py --B 1 --T 1024 --d ${NCU_D:-32} --k $k > "$OUT/ncu-targets-k$k.txt" 2>&1
    echo "ncu targets k=$k rc=$?" | tee -a "$OUT/summary.txt"
    grep -E "Duration|Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Executed Ipc A|Warp Cycles Per Issued|Issue Slots Busy|Executed Instructions  |L2 Hit|One or More|No Eligible|Active Warps Per" "$OUT/ncu-targets-k$k.txt" | head -30
  done
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  TQDM_DISABLE=1 timeout ${BENCH_TIMEOUT:-240} python3 -m dare_kernels.bench --no-ids $([ "${SERVING:-0}" = 1 ] || echo --no-serving) --backends bmm+topk cuda --d ${BENCH_D:-16 128} ${BENCH_MODELS:+--models $BENCH_MODELS} \
    --json "$OUT/bench.json" ${BENCH_ARGS:-} > "$OUT/bench.txt" 2>&1  # progress and each model's rows as they come
  echo "bench rc=$?" | tee -a "$OUT/summary.txt"
  grep -E "^\| (search|inference|train|phase)|^  (search|not)|not captured" "$OUT/bench.txt"
fi
if [ "${BACKWARD:-1}" = 1 ]; then
  timeout ${BACKWARD_TIMEOUT:-90} python3 bench/tools/profile_backward.py > "$OUT/backward.txt" 2>&1
  grep "backward:" "$OUT/backward.txt" || tail -20 "$OUT/backward.txt"
  if [ "${BACKWARD_AB:-0}" = 1 ]; then  # the same with the ops' Python autograd (A/B of the C++ one)
    timeout ${BACKWARD_TIMEOUT:-90} python3 bench/tools/profile_backward.py --python-autograd > "$OUT/backward-python.txt" 2>&1
    grep "backward:" "$OUT/backward-python.txt" | sed 's/^/python autograd: /' || tail -20 "$OUT/backward-python.txt"
  fi
fi
if [ -n "${TEST_GROUPS:-}" ]; then
  # Test selections run side by side (the GPU's tests are mostly host-bound): TEST_GROUPS is
  # ';'-separated -k expressions over TEST_FILES, one pytest process each.
  IFS=';' read -ra groups <<< "$TEST_GROUPS"
  for i in "${!groups[@]}"; do
    ( timeout ${TEST_TIMEOUT:-240} python3 -m pytest ${TEST_FILES:-python_tests/test_gpu.py} -q -rf -p no:cacheprovider \
        --maxfail=5 --durations=3 -k "${groups[$i]}" > "$OUT/tests-$i.log" 2>&1
      echo "tests [${groups[$i]}] rc=$?: $(tail -1 "$OUT/tests-$i.log")" >> "$OUT/summary.txt" ) &
  done
  wait
  grep -hE "^(FAILED|ERROR)|^E  " "$OUT"/tests-*.log | head -20
elif [ -z "${SKIP_TESTS:-}" ]; then
  timeout ${TEST_TIMEOUT:-240} python3 -m pytest ${TEST_FILES:-python_tests/test_topk_attention_embedding.py python_tests/test_optim.py \
    python_tests/test_topk_attention.py python_tests/test_gpu.py python_tests/test_models.py} -q -rf -p no:cacheprovider \
    --maxfail=5 --durations=5 -k "${TEST_K:-((sparse or backward or gradients or capture) and (cuda or capture)) or graph_replay or (fused_bag and cuda)}" \
    > "$OUT/tests.log" 2>&1
  echo "tests rc=$?: $(tail -1 "$OUT/tests.log")" | tee -a "$OUT/summary.txt"
  grep -E "^(FAILED|ERROR)|^E  " "$OUT/tests.log" | head -20
fi
if [ "${PROFILE:-1}" = 1 ]; then
  timeout ${PROFILE_TIMEOUT:-90} python3 bench/tools/profile_model.py --models dare:16 twin:128 --optimizers rows \
    > "$OUT/profile.txt" 2>&1
  grep "==" "$OUT/profile.txt"
fi
if [ "${PROFILE_SERVING:-0}" = 1 ]; then
  timeout ${PROFILE_TIMEOUT:-90} python3 bench/tools/profile_model.py --models dare:16 twin:128 --serving 1 1024 \
    > "$OUT/profile-serving.txt" 2>&1
  echo "profile-serving rc=$?" | tee -a "$OUT/summary.txt"; grep -E "^==|^GPU|^  " "$OUT/profile-serving.txt" | head -80
fi
if [ "${FUXICTR:-0}" = 1 ]; then
  # Issue 28's GPU rows: FuxiCTR's whole TWIN, as shipped vs swapped. The machine has no network:
  # the wheel and model_zoo/LongCTR travel in .fx/ (git-ignored; pass carry: [".fx"]).
  python3 -m pip install -q --no-deps --target /tmp/fx .fx/fuxictr-*.whl > /dev/null 2>&1 \
    && PYTHONPATH=.:/tmp/fx FUXICTR_MODEL_ZOO=.fx/LongCTR timeout ${FUXICTR_TIMEOUT:-120} python3 bench/tools/fuxictr_twin_time.py \
      --device cuda --B 1024 --L 10000 --emb 8 32 --repeat 10 --json "$OUT/fuxictr_twin.json" > "$OUT/fuxictr.txt" 2>&1
  echo "fuxictr rc=$?" | tee -a "$OUT/summary.txt"; tail -6 "$OUT/fuxictr.txt"
fi
