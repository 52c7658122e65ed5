# Sourced by the GPU machine's scripts (device.sh, device_step.sh, device_study.sh): $OUT, the
# build's environment, summary(), the card and versions at the top of $OUT/summary.txt, then the
# build. SKIP_BUILD (non-empty): no build when the extension of an earlier call on this warm
# machine loads (its build output stays between calls; the sources may have changed since).
OUT=${OUT:-/tmp/dare-out}
mkdir -p "$OUT"
export MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} DARE_BUILD_CUDA=1 PYTHONUNBUFFERED=1
summary() { echo "$*" | tee -a "$OUT/summary.txt"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/summary.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$OUT/summary.txt"
# The machine's copy of the tree carries the git metadata it was first given: the tree sent may be newer.
git log -1 --format='git HEAD there: %h %s' 2>/dev/null | tee -a "$OUT/summary.txt"
t0=$(date +%s)
if [ -n "${SKIP_BUILD:-}" ] && python3 -c "import dare_kernels, sys; sys.exit(not dare_kernels._library.with_cuda)" 2>/dev/null; then
  summary "build: skipped (SKIP_BUILD, the extension from an earlier call loads)"
elif python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
  summary "build: $(( $(date +%s) - t0 )) s"
  rm -f "$OUT/build.log"  # $OUT returns a bounded number of files
else
  tail -40 "$OUT/build.log"; exit 1
fi
