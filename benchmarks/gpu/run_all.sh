#!/usr/bin/env bash
# Every GPU check and benchmark of r0kit in one run, sized for a short device lease (~8 minutes):
#   1. kernel correctness tests (fp32/fp16/bf16) and the kernel throughput sweep (run_kernels.sh)
#   2. reward forward+backward at 512 px, real-size architectures, random weights
#   3. one test-time optimization step, SD-Turbo-size, 512 px, 4 rewards
#   4. one R0 training step, SD1.5-size, 512 px, K=4, 3 rewards, LoRA and full
#
#   bash benchmarks/gpu/run_all.sh            # from the repository root; results land in $OUT
#
# Runs from the source tree (no install): PYTHONPATH gets the repository and plugins/.
# Python wheels in .whl/ (pure-Python packages the machine lacks) are installed to /tmp/site first.
# Each phase has its own time limit; a failing phase is logged and the next one runs.
# Everything is packed into $OUT/results.tar.gz, with the console log beside it.
set -u -o pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu-out}"
mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/r0kit-gpu.XXXX)"
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT:$ROOT/plugins${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg R0KIT_DISABLE_AUTOLOAD=1
nvidia-smi > "$WORK/nvidia-smi.txt" 2>&1
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0))"
STATUS=()
phase() {  # phase NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  echo "=== [$(date +%T)] $name (limit ${limit}s): $*"
  timeout -k 5 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  tail -n 30 "$WORK/$name.log"
  STATUS+=("$name=rc$rc")
}
KERNEL_TEST_TIMEOUT=90 BENCH_MINUTES=1.9 BENCH_TIMEOUT=140 OUT="$WORK/kernels" \
  phase kernels 270 bash benchmarks/gpu/run_kernels.sh
phase rewards 80 "$PY" benchmarks/rewards/bench_rewards.py --device cuda --dtype float32 --reps 10
phase optimize 75 "$PY" benchmarks/optimize/bench_step.py --mode gpu
if [ -f benchmarks/train/bench_train_step.py ]; then
  phase train 75 "$PY" benchmarks/train/bench_train_step.py --device cuda
fi
cp -r benchmarks/results "$WORK/results"
tar czf "$OUT/results.tar.gz" -C "$WORK" .
echo "=== status: ${STATUS[*]}"
[ -f "$WORK/kernels/summary.txt" ] && cat "$WORK/kernels/summary.txt"
