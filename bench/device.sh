#!/usr/bin/env bash
# One call on the GPU machine (the `device` tool): build, the full test matrix on
# CUDA, compute-sanitizer on a subset, the benchmarks and the main job. Logs and
# JSON go to $OUT; a short summary is printed last.
#   bash bench/device.sh [quick]
set -uo pipefail
MODE=${1:-full}
source "$(dirname "$0")/device_setup.sh"

if [ -z "${SKIP_TESTS:-}" ]; then
  t0=$(date +%s)
  timeout ${TEST_TIMEOUT:-3000} python3 -m pytest python_tests -q -p no:cacheprovider --maxfail=5 ${PYTEST_ARGS:-} > "$OUT/tests.log" 2>&1
  rc=$?
  summary "tests rc=$rc ($(( $(date +%s) - t0 )) s): $(tail -1 "$OUT/tests.log")"
  [ $rc -ne 0 ] && grep -E "^(FAILED|ERROR)|^E  " "$OUT/tests.log" | head -40
fi

if [ -n "${TRAIN:-}" ]; then
  # The reference models on the GPU: AMP, each variant, then DDP through torchrun.
  for cfg in "dare 16" "twin 128" "twin_proj 16"; do
    set -- $cfg
    python3 -m dare_kernels.train --model $1 --d-att $2 --amp --users 20000 --targets 4 --max-len 2000 --k 64 \
      --batch-size 512 --steps 300 --eval-every 300 --quiet --metrics-json "$OUT/train.json" > "$OUT/train.tmp" 2>&1
    summary "train $1 d_att=$2 (H200, AMP) rc=$? $(python3 -c "import json; r=json.load(open('$OUT/train.json')); print(round(r['seconds'],1), 's', {k: round(v, 4) for k, v in r['test'].items()})" 2>&1 | tail -1)"
  done
  torchrun --standalone --nproc-per-node 1 -m dare_kernels.train --model dare --amp --users 5000 --targets 4 --max-len 1000 --batch-size 2048 \
    --steps 50 --eval-every 50 --quiet > "$OUT/train.tmp" 2>&1
  summary "torchrun DDP x1 rc=$? $(tail -1 "$OUT/train.tmp")"
  rm -f "$OUT/train.tmp" "$OUT/train.json"
fi

if [ "$MODE" = full ]; then
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck initcheck}; do
    for b in ${SANITIZE_BACKENDS:-cuda}; do
      compute-sanitizer --tool $tool --error-exitcode 9 python3 bench/tools/sanitize_cuda.py $b > "$OUT/sanitize.tmp" 2>&1
      summary "compute-sanitizer $tool $b rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitize.tmp" | tail -1)"
      cat "$OUT/sanitize.tmp" >> "$OUT/sanitize.log"; rm -f "$OUT/sanitize.tmp"
    done
  done
fi

if [ -n "${PROFILE:-}" ]; then
  for d in 16 128; do
    ncu --clock-control none -k regex:topk --launch-skip 4 --launch-count 2 --section SpeedOfLight \
      --section Occupancy --section LaunchStats --section WarpStateStats \
      python3 bench/tools/profile_cuda.py --B 1024 --d $d >> "$OUT/ncu.txt" 2>&1
  done
  grep -E "topk_kernel|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Stall" "$OUT/ncu.txt" | head -40
fi

if [ -n "${SOURCE_PROFILE:-}" ]; then
  # Where the time goes inside the kernel: instructions and stall samples per SASS region.
  for shape in "1024 16" "8 32"; do
    set -- $shape
    ncu --clock-control none -k regex:topk_kernel --launch-skip 3 --launch-count 1 --section SourceCounters \
      --section WarpStateStats -o /tmp/src_$1_$2 python3 bench/tools/profile_cuda.py --B $1 --d $2 > /dev/null 2>&1
    ncu -i /tmp/src_$1_$2.ncu-rep --page source --csv --print-source sass > "$OUT/sass_B$1_d$2.csv" 2>&1
    echo "B=$1 d=$2"; python3 bench/tools/sass_regions.py "$OUT/sass_B$1_d$2.csv"
  done
  # The many-targets kernel, B = 1, T = 1024, d = 32.
  ncu --clock-control none -k regex:targets_kernel --launch-skip 2 --launch-count 1 --section SourceCounters \
    --section WarpStateStats -o /tmp/src_targets python3 bench/tools/profile_cuda.py --B 1 --T 1024 --d 32 > /dev/null 2>&1
  ncu -i /tmp/src_targets.ncu-rep --page source --csv --print-source sass > "$OUT/sass_targets_d32.csv" 2>&1
  echo "B=1 T=1024 d=32"; python3 bench/tools/sass_regions.py "$OUT/sass_targets_d32.csv"
fi

if [ -n "${PROFILE_TRITON:-}" ]; then
  python3 bench/tools/profile_triton.py 2>&1 | tee "$OUT/profile_triton.txt"
fi
if [ -n "${NCU_TRITON:-}" ]; then
  for d in 16 128; do
    DARE_TRITON_AUTOTUNE=0 ncu --clock-control none -k regex:_search_kernel --launch-skip 2 --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      python3 bench/tools/profile_cuda.py --backend triton --B 1024 --d $d >> "$OUT/profile_triton.txt" 2>&1
  done
  grep -E "_search_kernel|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Stall|Issue Slots|Executed Ipc" "$OUT/profile_triton.txt" | head -40
fi

if [ -n "${SPAN_SWEEP:-}" ]; then
  # Small batches: keys per CTA when rows are split (DARE_CUDA_MIN_SPAN).
  for c in $SPAN_SWEEP; do
    echo "DARE_CUDA_MIN_SPAN=$c" >> "$OUT/bench_extra.txt"
    DARE_CUDA_MIN_SPAN=$c python3 -m dare_kernels.bench --backends cuda --B 8 --d 16 32 128 --no-model --no-serving --quiet >> "$OUT/bench_extra.txt" 2>&1
  done
fi

[ -n "${SKIP_BENCH:-}" ] && exit 0
python3 -m dare_kernels.bench --json "$OUT/bench.json" --plot "$OUT/bench.png" --quiet ${BENCH_ARGS:-} > "$OUT/bench.txt" 2>&1
python3 -m dare_kernels.bench --B 8 --d 16 32 128 --no-serving --quiet >> "$OUT/bench_extra.txt" 2>&1
# Many targets of one sequence: the many-targets kernel, then the streaming kernel on the same shapes.
python3 -m dare_kernels.bench --B 1 --T 1024 --quiet --no-model --no-serving >> "$OUT/bench_extra.txt" 2>&1
python3 -m dare_kernels.bench --B 128 --T 64 --d 32 128 --quiet --no-model --no-serving >> "$OUT/bench_extra.txt" 2>&1
echo "DARE_CUDA_TARGETS=0 (streaming kernel)" >> "$OUT/bench_extra.txt"
DARE_CUDA_TARGETS=0 python3 -m dare_kernels.bench --backends cuda --B 1 --T 1024 --quiet --no-model --no-serving >> "$OUT/bench_extra.txt" 2>&1
python3 bench/tools/graph_time.py --B 8 --d 16 32 128 >> "$OUT/bench_extra.txt" 2>&1  # GPU time alone (graph replay)
python3 bench/tools/graph_time.py --B 1 --T 1024 --d 32 128 >> "$OUT/bench_extra.txt" 2>&1
if [ -n "${PYTEST_BENCH:-}" ]; then
  python3 -m pytest bench/ --benchmark-only -q -p no:cacheprovider -k "$PYTEST_BENCH" --benchmark-max-time=0.1 \
    --benchmark-min-rounds=5 --benchmark-columns=median,min,rounds --benchmark-sort=fullname > "$OUT/bench_pytest.txt" 2>&1
  summary "pytest bench/ rc=$? $(tail -1 "$OUT/bench_pytest.txt")"
fi
cat "$OUT/bench.txt"; grep -E "^\||^DARE|graph replay" "$OUT/bench_extra.txt" | grep -v -- "---"
