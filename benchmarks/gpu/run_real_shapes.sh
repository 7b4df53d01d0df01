#!/usr/bin/env bash
# The kernels at the sizes r0kit really runs, on one GPU, in one go (~8 minutes on an H100/H200):
#   1. the kernel tests on the GPU (fp32, fp16, bf16; the host-path tests: no sync, no copy, no graph break)
#   2. the real-shape sweep: eager, torch.compile and triton (BENCH_PROVIDERS; add auto for the dispatcher), forward/backward/full,
#      p50 and the host time per call (benchmarks/kernels/run.py --sizes real: images 512² at batch 1, 4, 8;
#      latents 4×64² and 4×128² at batch 1–16; cosine heads; LoRA 1/10/50 M and the SD1.5 and SDXL UNets)
#   3. the summary table, one plot per op, and crossover.json: per op, the size below which the torch
#      reference was faster (copy its "devices" entry into r0kit/kernels/crossover.json, and the dispatcher
#      then picks the faster path per size on this GPU)
#
#   bash benchmarks/gpu/run_real_shapes.sh        # from the repository root; results land in $OUT (./gpu-out)
#
# Knobs: KERNEL_TEST_TIMEOUT (s, default 150; 0 skips the tests), BENCH_MINUTES (default 5.5: no case starts
# after that), BENCH_TIMEOUT (s, default 420), BENCH_ARGS (default "--sizes real --dtypes fp32").
# R0KIT_GPU_SCRIPT_DRY_RUN=1 runs the plumbing on a CPU (use BENCH_ARGS="--sizes tiny --providers eager,auto").
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-./gpu-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/log.txt"
PY="${PYTHON:-python}"
export PYTHONPATH="$ROOT:$ROOT/plugins${PYTHONPATH:+:$PYTHONPATH}"
export R0KIT_KERNELS=auto PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg R0KIT_DISABLE_AUTOLOAD=1
unset TRITON_INTERPRET
STATUS=()
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
START=$(date +%s)

log "r0kit real-shape kernel sweep in $ROOT -> $OUT"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi unavailable"
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__,
  '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA DEVICE')" 2>&1
} | tee -a "$LOG"
if [ "${R0KIT_GPU_SCRIPT_DRY_RUN:-0}" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  log "no CUDA device visible: this script is for a GPU machine"
  exit 2
fi

# ---------------------------------------------------------------- 1. the kernel tests on the GPU
if [ "${KERNEL_TEST_TIMEOUT:-150}" != 0 ] && "$PY" -c "import pytest" 2>/dev/null; then
  log "phase 1: pytest tests/kernels (timeout ${KERNEL_TEST_TIMEOUT:-150}s)"
  # --confcutdir keeps the suite-wide tests/conftest.py (plugin host) out: only the kernels are under test.
  timeout "${KERNEL_TEST_TIMEOUT:-150}" "$PY" -m pytest tests/kernels -m "gpu or not slow" -q -ra -x \
      --confcutdir=tests/kernels -p no:cacheprovider --junitxml="$OUT/pytest.xml" 2>&1 | tee -a "$LOG" | tail -n 30
  rc=${PIPESTATUS[0]}
  STATUS+=("tests=rc$rc$([ "$rc" = 124 ] && echo '(timed out)')")
else
  STATUS+=("tests=skipped")
fi

# ---------------------------------------------------------------- 2. the sweep
SLUG="$("$PY" -c "import torch, re; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name(0).lower()).strip('-'))" 2>/dev/null || echo cpu)"
CSV="$OUT/kernels_${SLUG}_real.csv"
log "phase 2: real-shape sweep -> $CSV (no new case after ${BENCH_MINUTES:-5.5} min, hard limit ${BENCH_TIMEOUT:-420}s)"
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-420}" "$PY" benchmarks/kernels/run.py ${BENCH_ARGS:---sizes real --dtypes fp32} \
    --providers "${BENCH_PROVIDERS:-eager,compile,triton}" --max-minutes "${BENCH_MINUTES:-5.5}" --csv "$CSV" 2>&1 \
    | tee -a "$LOG" | grep -v "^  File\|^    " | tail -n 60
rc=${PIPESTATUS[0]}
STATUS+=("sweep=rc$rc$([ "$rc" = 124 ] && echo '(hit the hard limit; rows so far are in the CSV)')")

# ---------------------------------------------------------------- 3. summary, plots, crossover
if [ -s "$CSV" ]; then
  log "phase 3: summary, plots, crossover"
  timeout 90 "$PY" benchmarks/kernels/plot.py --csv "$CSV" --out "$OUT" --summary --crossover "$OUT/crossover.json" \
      > "$OUT/summary_raw.txt" 2>&1
  rc=$?
  STATUS+=("summary=rc$rc")
  sed -n '/^devices:/,/^wrote .*crossover/p' "$OUT/summary_raw.txt" > "$OUT/summary.txt"
  [ "$rc" = 0 ] || tail -n 30 "$OUT/summary_raw.txt" | tee -a "$LOG"
else
  STATUS+=("summary=skipped(no rows)")
fi

log "done in $(( $(date +%s) - START ))s: ${STATUS[*]}"
echo "==================== full pass (forward + backward), p50; host us = host time per call ===================="
[ -s "$OUT/summary.txt" ] && tee -a "$LOG" < "$OUT/summary.txt"
echo "status: ${STATUS[*]}"
echo "files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
