#!/usr/bin/env bash
# Issue 26's study at L = 10,000 on the GPU machine, over as many calls as it takes: each
# call runs what fits its time (model_study --time-limit) and writes every finished run to
# $OUT/study-gpu.json; copy that file to bench/results/model-study/study-gpu.json before the
# next call, which goes on from it (--reuse). Optional tests first (TEST_K: a pytest -k).
#   STUDY_SECONDS=400 TASKS="conflict" bash bench/device_study.sh
set -uo pipefail
OUT=${OUT:-/tmp/dare-out}; mkdir -p "$OUT"
export MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} DARE_BUILD_CUDA=1 PYTHONUNBUFFERED=1
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/summary.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$OUT/summary.txt"
if python3 -c "import dare_kernels, sys; sys.exit(not dare_kernels._library.with_cuda)" 2>/dev/null; then
  echo "build: skipped (the extension from an earlier call loads)" | tee -a "$OUT/summary.txt"
else
  python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"; rm -f "$OUT/build.log"
fi
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
