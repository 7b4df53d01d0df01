#!/usr/bin/env bash
# GPU correctness tests (fp32, fp16, bf16) and the kernel benchmark, in one go.
#
#   PYTHONPATH=. bash benchmarks/gpu/run_kernels.sh          # from the repository root
#
# Writes into "$OUT" (default ./gpu-out): log.txt, pytest.xml, kernels_<device>.csv, PNG plots,
# summary.txt. Needs torch with CUDA and triton; pluggy for r0kit's core (pydantic, diffusers and
# the network are not needed). Sized to finish in under ~6 minutes on an H100/H200:
#   KERNEL_TEST_TIMEOUT (s, default 140), BENCH_MINUTES (default 2.2), BENCH_TIMEOUT (s, default 175),
#   BENCH_ARGS (default "--quick --dtypes fp32").
# A failing phase is logged and the next one still runs; the summary table is printed last.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-./gpu-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/log.txt"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export R0KIT_KERNELS=auto
unset TRITON_INTERPRET
export MPLBACKEND=Agg
export HF_HUB_OFFLINE=1
PY="${PYTHON:-python}"
STATUS=()

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
START=$(date +%s)

log "r0kit kernels GPU run in $ROOT -> $OUT"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi unavailable"
  "$PY" - <<'PYEOF' 2>&1
import importlib, sys
import torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE")
for m in ("triton", "pluggy", "pytest", "hypothesis", "matplotlib", "pydantic"):
    try:
        print(f"  {m} {importlib.import_module(m).__version__}")
    except Exception as exc:
        print(f"  {m} missing ({type(exc).__name__})")
PYEOF
} | tee -a "$LOG"

# R0KIT_GPU_SCRIPT_DRY_RUN=1 lets the script's plumbing be exercised on a CPU (with BENCH_ARGS="--sizes tiny").
if [ "${R0KIT_GPU_SCRIPT_DRY_RUN:-0}" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  log "no CUDA device visible: this script is for a GPU machine (CPU: python -m pytest tests/kernels -q)"
  exit 2
fi

# ---------------------------------------------------------------- 1. correctness tests on the GPU
if "$PY" -c "import pytest" 2>/dev/null; then
  log "phase 1: pytest tests/kernels -m 'gpu or not slow' (timeout ${KERNEL_TEST_TIMEOUT:-140}s)"
  # --confcutdir keeps the suite-wide tests/conftest.py (plugin host) out: only the kernels are under test.
  timeout "${KERNEL_TEST_TIMEOUT:-140}" "$PY" -m pytest tests/kernels -m "gpu or not slow" -q -ra \
      --confcutdir=tests/kernels -p no:cacheprovider --junitxml="$OUT/pytest.xml" 2>&1 | tee -a "$LOG" | tail -n 40
  rc=${PIPESTATUS[0]}
  STATUS+=("tests: rc=$rc$([ "$rc" = 124 ] && echo ' (timed out)')")
else
  log "phase 1 skipped: pytest is not installed (the benchmark still checks each kernel against eager)"
  STATUS+=("tests: skipped (no pytest)")
fi

# ---------------------------------------------------------------- 2. benchmark
SLUG="$("$PY" -c "import torch, re; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name(0).lower()).strip('-'))" 2>/dev/null || echo gpu)"
CSV="$OUT/kernels_${SLUG}.csv"
log "phase 2: benchmark -> $CSV (stops starting cases after ${BENCH_MINUTES:-2.2} min, hard limit ${BENCH_TIMEOUT:-175}s)"
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-175}" "$PY" benchmarks/kernels/run.py ${BENCH_ARGS:---quick --dtypes fp32} \
    --max-minutes "${BENCH_MINUTES:-2.2}" --csv "$CSV" 2>&1 | tee -a "$LOG" | grep -v "^  File\|^    " | tail -n 80
rc=${PIPESTATUS[0]}
STATUS+=("bench: rc=$rc$([ "$rc" = 124 ] && echo ' (hit the hard limit; rows so far are in the CSV)')")

# ---------------------------------------------------------------- 3. plots and summary
if [ -s "$CSV" ]; then
  log "phase 3: plots"
  timeout 60 "$PY" benchmarks/kernels/plot.py --csv "$CSV" --out "$OUT" --summary > "$OUT/summary_raw.txt" 2>&1
  rc=$?
  STATUS+=("plots: rc=$rc")
  grep "^wrote" "$OUT/summary_raw.txt" | tee -a "$LOG"
  sed -n '/^devices:/,$p' "$OUT/summary_raw.txt" > "$OUT/summary.txt"
  [ "$rc" = 0 ] || cat "$OUT/summary_raw.txt" | tee -a "$LOG"
else
  STATUS+=("plots: skipped (no CSV rows)")
fi

log "done in $(( $(date +%s) - START ))s: ${STATUS[*]}"
echo
echo "==================== summary (full pass = forward + backward; p50) ===================="
[ -s "$OUT/summary.txt" ] && cat "$OUT/summary.txt" | tee -a "$LOG"
echo "status: ${STATUS[*]}"
echo "files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
