#!/usr/bin/env bash
# Everything issue 6 needs from a GPU, in two calls that each fit one 10-minute device command (A at most ~8 min,
# B ~7 min; with a 15-minute device budget run A first, and B in the same warm lease only if time is left):
#   bash benchmarks/gpu_session.sh A    # the gpu tests, the speedrun (warm-up + 5 seeds + reference), the seed experiment
#   bash benchmarks/gpu_session.sh B    # throughput/MFU (eager and compiled) and the data/loader benchmark
# It runs from the repository root with the machine's own python3/PyTorch (PYTHONPATH=src, nothing installed) and
# reads CIFAR-10 from $CIFAR (default .data/cifar10-jpeg.tar.gz: copy ../shared/datasets/cifar10-jpeg.tar.gz there,
# list .data/ in .git/info/exclude and carry it). Logs go to $OUT (default /tmp/gpu-session), one per step; a
# step that fails or runs out of its time is reported and the next one still runs.
# Try it on the CPU first: DEVICE=cpu QUICK=--quick bash benchmarks/gpu_session.sh A
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=${1:-A}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-}
CIFAR=${CIFAR:-.data/cifar10-jpeg.tar.gz}
OUT=${OUT:-/tmp/gpu-session}
PY=${PY:-python3}
CACHE=${CACHE:-/tmp/cnnlab-cache}
export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p "$OUT"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, say how it ended
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout -k 15 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s (limit $limit s)" | tee -a "$OUT/steps.txt"
    tail -n 12 "$OUT/$name.log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
  $PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())"
  git rev-parse --short HEAD 2>/dev/null; } >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

case $STAGE in
A)
    step gpu_tests 150 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
    step speedrun 200 $PY benchmarks/speedrun.py --device "$DEVICE" $QUICK --data "$CIFAR" --cache-dir "$CACHE"
    step seed_experiment 120 $PY benchmarks/seed_experiment.py --device "$DEVICE" $QUICK --data "$CIFAR" \
        --cache-dir "$CACHE"
    ;;
B)
    step throughput 300 $PY benchmarks/throughput.py --device "$DEVICE" $QUICK
    step data 120 $PY benchmarks/data.py --device "$DEVICE" $QUICK --data "$CIFAR" --cache-dir "$CACHE"
    ;;
*)
    echo "usage: benchmarks/gpu_session.sh A|B" >&2
    exit 2
    ;;
esac
