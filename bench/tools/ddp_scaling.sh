#!/usr/bin/env bash
# Issue 29, item 2, in one call on a machine with N >= 2 GPUs (run from the repository root):
#   bash bench/tools/ddp_scaling.sh [OUT_DIR]        (default bench/results/ddp)
# For DARE-16 and TWIN-128 (L = 10000, B = 1024 per GPU, k = 128, d_rep = 128, 1M items):
#   1. check: 2 GPUs x B against one process x 2B (gradients each step, replicas, parameters),
#      and the same on every GPU of the machine when it has more than 2;
#   2. time: steps/s and samples/s on 1, 2, 4, 8 GPUs (as many as there are), each optimiser
#      (dense: DDP's all-reduce of every table row; rows: all-gather of the touched rows),
#      with the step alone (no communication) and the rows' exchange alone;
#   3. summary.json: scaling efficiency. Each file records the cards, torch and the NCCL settings.
set -euo pipefail
OUT=${1:-bench/results/ddp}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0} TORCH_SYMM_MEM_DISABLE_MULTICAST=${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1}
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 2 ]; then echo "ddp_scaling.sh needs >= 2 GPUs, found $GPUS" >&2; exit 2; fi
git rev-parse HEAD > "$OUT/commit.txt" 2>/dev/null || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/cards.csv" || true
nvidia-smi topo -m > "$OUT/topology.txt" 2>&1 || true
TOOL=bench/tools/ddp_scaling.py
run() { local n=$1; shift; torchrun --standalone --nproc-per-node "$n" "$TOOL" "$@"; }
MODELS=("dare 16" "twin 128")
for m in "${MODELS[@]}"; do
  set -- $m
  for n in 2 "$GPUS"; do
    for opt in dense rows; do
      run "$n" check --model "$1" --d-att "$2" --optimizer "$opt" --steps 5 \
        --json "$OUT/check-$1$2-$opt-$n.json" > "$OUT/check-$1$2-$opt-$n.log" 2>&1 || echo "check $1 $2 $opt $n failed" >&2
    done
    [ "$GPUS" -gt 2 ] || break
  done
  for n in 1 2 4 8; do
    [ "$n" -le "$GPUS" ] || continue
    for opt in dense rows; do
      run "$n" time --model "$1" --d-att "$2" --optimizer "$opt" --amp --steps 30 --warmup 10 \
        --json "$OUT/time-$1$2-$opt-$n.json" > "$OUT/time-$1$2-$opt-$n.log" 2>&1 || echo "time $1 $2 $opt $n failed" >&2
    done
  done
done
python "$TOOL" summary "$OUT" --json "$OUT/summary.json"
