#!/usr/bin/env bash
# Issue 26's study at L = 10,000 on the GPU machine, over as many calls as it takes: each
# call runs what fits its time (model_study --time-limit) and writes every finished run to
# $OUT/study-gpu.json; copy that file to bench/results/model-study/study-gpu.json before the
# next call, which goes on from it (--reuse). Optional tests first (TEST_K: a pytest -k).
#   STUDY_SECONDS=400 TASKS="conflict" bash bench/device_study.sh
set -uo pipefail
start=$(date +%s)
SKIP_BUILD=${SKIP_BUILD-1}  # a call after the first on a warm machine: the runs need no new build
source "$(dirname "$0")/device_setup.sh"
if [ -n "${TEST_K:-}" ]; then
  timeout ${TEST_TIMEOUT:-150} python3 -m pytest python_tests/test_gpu.py python_tests/test_models.py -q -rf -p no:cacheprovider \
    --maxfail=5 --durations=5 -k "$TEST_K" > "$OUT/tests.log" 2>&1
  echo "tests rc=$?: $(tail -1 "$OUT/tests.log")" | tee -a "$OUT/summary.txt"
  grep -E "^(FAILED|ERROR)|^E  " "$OUT/tests.log" | head -20
fi
PREV=bench/results/model-study/study-gpu.json
left=$(( ${STUDY_SECONDS:-400} - ($(date +%s) - start) ))
python3 bench/tools/model_study.py --device cuda --amp --L 10000 --users 20000 --log-users 4000 \
  --log-len 10200 10500 --batch-size 2048 --k 64 --jobs ${JOBS:-1} --timing-steps ${TIMING_STEPS:-40} --tasks ${TASKS:-conflict control taobao} \
  ${CONFIGS:+--configs $CONFIGS} --time-limit $left $([ -f $PREV ] && echo --reuse $PREV) --json "$OUT/study-gpu.json" \
  2>&1 | tee "$OUT/study.txt" | grep -vE "^\s*$" | tail -40
