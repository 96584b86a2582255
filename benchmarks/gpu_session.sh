#!/usr/bin/env bash
# Everything issue 18 needs from a GPU, in one device call, the most important numbers first:
#   bash benchmarks/gpu_session.sh          # all: tests, speedrun, seed experiment, throughput/MFU, the seed's four
#   bash benchmarks/gpu_session.sh A        # only the tests, the speedrun and the seed experiment
#   bash benchmarks/gpu_session.sh B        # only throughput/MFU (eager and compiled) and the data/loader benchmark
#   bash benchmarks/gpu_session.sh inspect  # issue 17 on the GPU: the GPU tests, what --tensorboard costs, a
#                                           # speedrun run evaluated (gallery) and explained, its pictures in $OUT
#   bash benchmarks/gpu_session.sh race     # issue 26, item 6: airbench94 and the speedrun preset in this call
#                                           # (eager, then CUDA graphs via --compile-mode reduce-overhead with
#                                           # TORCH_LOGS=recompiles), 5 runs each after a warm-up; needs
#                                           # $DATA/anchors (a copy of ../shared/anchors) beside the CIFAR archive;
#                                           # then step time against batch size and a 20-step profile
#   bash benchmarks/gpu_session.sh feed     # issue 27: the streamed ImageNet loader, CPU path vs GPU decode
#   bash benchmarks/gpu_session.sh lent     # as open, with the CUDA-graph step: its GPU tests, airbench94 beside
#                                           # the speedrun eager and graphed, the seed experiment, the seed report,
#                                           # the streamed loader, the step profile, the other GPU tests
#   bash benchmarks/gpu_session.sh next     # the graph tests again (dropout, mixup, freeze, resume, streamed added),
#                                           # airbench94, max-pool against amax (pool_cost.py), the speedrun graphed
#                                           # with and without cuDNN autotuning, speednet's step profile with it,
#                                           # then MFU graphed against compiled + graphed (BN fused)
#   bash benchmarks/gpu_session.sh open     # what issues 25-27 still need, most wanted first: the GPU tests, the
#                                           # race, the step profile, the streamed loader, CUDA graphs, the seed
#                                           # report (one call: DEADLINE=480 under a 560 s timeout)
# No step starts past $DEADLINE seconds (default 450) and each is cut at its own limit or the deadline, so the call
# ends inside a device command's timeout with what it measured; a step that fails or runs out is reported and the
# next one still runs. Each step logs to $OUT/NAME.log as it goes (a killed call still returns them), $OUT/steps.txt
# says how each ended, and the seed report's run folders come back as $OUT/seed-report.tgz (8 files at most).
# It runs from the repository root with the machine's own python3/PyTorch (PYTHONPATH=src, nothing installed) and
# reads its data from $DATA (default .data/, holding cifar10-jpeg.tar.gz and tiny-imagenet-200-train100.tar.gz
# copied from ../shared/datasets; .data/ is git-ignored: name it in the device call's carry).
# Try it on the CPU first: DEVICE=cpu QUICK=--quick bash benchmarks/gpu_session.sh A
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=${1:-all}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-}
DATA=${DATA:-.data}
CIFAR=$DATA/cifar10-jpeg.tar.gz
OUT=${OUT:-/tmp/gpu-session}
PY=${PY:-python3}
CACHE=${CACHE:-/tmp/cnnlab-cache}
DEADLINE=${DEADLINE:-450}
export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p "$OUT"

step() {  # step NAME SECONDS COMMAND...: run with a time limit (cut at the deadline), log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - SECONDS))
    if ((left < 20)); then
        echo "== $name: skipped at $SECONDS s (deadline $DEADLINE s)" | tee -a "$OUT/steps.txt"
        return
    fi
    ((limit > left)) && limit=$left
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s (limit $limit s)" | tee -a "$OUT/steps.txt"
    tail -n 14 "$OUT/$name.log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
  $PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())"
  git rev-parse --short HEAD 2>/dev/null; nproc; } >"$OUT/steps.txt" 2>&1
cat "$OUT/steps.txt"

tests() {
    step gpu_tests 150 $PY -m pytest -q -m gpu -rP -p no:cacheprovider tests/test_gpu.py
}
speed() {
    step speedrun 120 $PY benchmarks/speedrun.py --device "$DEVICE" $QUICK --data "$CIFAR" --cache-dir "$CACHE"
    step seed_experiment 90 $PY benchmarks/seed_experiment.py --device "$DEVICE" $QUICK --data "$CIFAR" \
        --cache-dir "$CACHE"
}
throughput() {
    step throughput 150 $PY benchmarks/throughput.py --device "$DEVICE" $QUICK
}
seed_report() {  # the seed's four experiments (RESULTS.md), on this device
    local epochs=()
    [[ -n $QUICK ]] && epochs=(--set epochs=1 --set subset=2000 --set test_subset=500)
    step seed_report 150 $PY -m cnnlab sweep seed-report --data-root "$DATA" --set "device=\"$DEVICE\"" \
        --set "cache_dir=\"$CACHE\"" "${epochs[@]}"
    tar czf "$OUT/seed-report.tgz" --exclude '*.pt' runs/seed-report 2>/dev/null
}
data() {
    step data 90 $PY benchmarks/data.py --device "$DEVICE" $QUICK --data "$CIFAR" --cache-dir "$CACHE"
}

inspect() {
    # The device's Python may lack tensorboard: then use the wheels unpacked into $DATA/py312 (pip download
    # --python-version 3.12 tensorboard protobuf; unzip), carried with the data.
    if ! $PY -c "import tensorboard" 2>/dev/null && [[ -d $DATA/py312 ]]; then
        export PYTHONPATH=src:$DATA/py312
    fi
    step gpu_tests 180 $PY -m pytest -q -m gpu -rP -p no:cacheprovider tests/test_gpu.py
    step tensorboard_cost 150 $PY benchmarks/tensorboard_cost.py --device "$DEVICE" $QUICK --data "$CIFAR" \
        --cache-dir "$CACHE"
    local run=/tmp/inspect-run overrides=()
    rm -rf "$run"  # a warm machine keeps /tmp: never evaluate an older call's run
    [[ -n $QUICK ]] && overrides=(--subset 2000 --epochs 1 --warmup-epochs 0.5 --lookahead-epoch 0)
    step inspect_train 90 $PY -m cnnlab train --config speedrun-cifar10 --data "$CIFAR" --cache-dir "$CACHE" \
        --device "$DEVICE" --tensorboard --out "$run" "${overrides[@]}"
    step inspect_eval 60 $PY -m cnnlab eval "$run" --device "$DEVICE"
    mkdir -p /tmp/inspect-images
    tar xzf "$CIFAR" -C /tmp/inspect-images --wildcards '*test/cat/*' 2>/dev/null
    step inspect_explain 60 bash -c "$PY -m cnnlab explain $run \$(find /tmp/inspect-images -name '*.jp*g' | sort | head -2) --out $OUT/explain"
    cp "$run"/{filters.png,mistakes_test.png,confusion_test.png,reliability_test.png,eval_test.json} "$OUT"/ 2>/dev/null
}

race() {
    local data ab=/tmp/airbench
    data=$(cd "$DATA" && pwd)  # airbench94 reads cifar10/ in its working folder: absolute paths from there
    mkdir -p "$ab"
    step airbench_prep 90 bash -c "cd $ab && $PY $data/anchors/prep_cifar.py $data/cifar10-jpeg.tar.gz"
    step airbench 150 bash -c "cd $ab && RUNS=6 $PY $data/anchors/airbench94.py"  # run 0: the warm-up
    step speedrun 120 $PY benchmarks/speedrun.py --device "$DEVICE" $QUICK --data "$CIFAR" --cache-dir "$CACHE" \
        --no-reference
    step step_profile 120 $PY benchmarks/step_profile.py --device "$DEVICE" $QUICK
    graphs
    step step_ops 120 $PY benchmarks/step_ops.py $QUICK  # counted on the CPU: the same on any machine
}
graphs() {
    step speedrun_graphs 240 env TORCH_LOGS=recompiles $PY benchmarks/speedrun.py --device "$DEVICE" $QUICK \
        --data "$CIFAR" --cache-dir "$CACHE" --no-reference --compile --compile-mode reduce-overhead
}
feed() {  # the synthetic folder is written from the Tiny ImageNet archive's images
    step stream 150 $PY benchmarks/stream.py --device "$DEVICE" $QUICK \
        --source "$DATA/tiny-imagenet-200-train100.tar.gz"
}
open_issues() {
    tests
    local data ab=/tmp/airbench
    data=$(cd "$DATA" && pwd)
    mkdir -p "$ab"
    step airbench_prep 90 bash -c "cd $ab && $PY $data/anchors/prep_cifar.py $data/cifar10-jpeg.tar.gz"
    step airbench 120 bash -c "cd $ab && RUNS=6 $PY $data/anchors/airbench94.py"
    step speedrun 100 $PY benchmarks/speedrun.py --device "$DEVICE" $QUICK --data "$CIFAR" --cache-dir "$CACHE" \
        --no-reference
    step step_profile 90 $PY benchmarks/step_profile.py --device "$DEVICE" $QUICK
    feed
    graphs
    seed_report
}

lent() {  # issues 25-27 with the CUDA-graph step (issue 26, item 2), most wanted first
    step graph_tests 90 $PY -m pytest -q -m gpu -rP -p no:cacheprovider tests/test_gpu.py -k "graph or wait"
    local data ab=/tmp/airbench
    data=$(cd "$DATA" && pwd)
    mkdir -p "$ab"
    step airbench_prep 90 bash -c "cd $ab && $PY $data/anchors/prep_cifar.py $data/cifar10-jpeg.tar.gz"
    step airbench 120 bash -c "cd $ab && RUNS=6 $PY $data/anchors/airbench94.py"  # run 0: the warm-up
    step speedrun_eager 100 $PY benchmarks/speedrun.py --device "$DEVICE" $QUICK --data "$CIFAR" \
        --cache-dir "$CACHE" --no-reference --cuda-graphs off
    step speedrun_graphed 100 $PY benchmarks/speedrun.py --device "$DEVICE" $QUICK --data "$CIFAR" \
        --cache-dir "$CACHE" --no-reference --cuda-graphs auto
    step seed_experiment 90 $PY benchmarks/seed_experiment.py --device "$DEVICE" $QUICK --data "$CIFAR" \
        --cache-dir "$CACHE"
    step throughput 90 $PY benchmarks/throughput.py --device "$DEVICE" $QUICK --modes eager,graphed
    seed_report
    feed
    step step_profile_graphed 90 $PY benchmarks/step_profile.py --device "$DEVICE" $QUICK --cuda-graphs on
    step step_profile 90 $PY benchmarks/step_profile.py --device "$DEVICE" $QUICK
    step gpu_tests 150 $PY -m pytest -q -m gpu -rP -p no:cacheprovider tests/test_gpu.py -k "not graph and not wait"
}

next() {  # after the H200 session of 2026-12-04: the graph tests again, and whether cuDNN autotuning (airbench94's
           # setting) closes the speedrun's remaining 1.22x, beside airbench94 in the same call
    step graph_tests 180 $PY -m pytest -q -m gpu -rP -p no:cacheprovider tests/test_gpu.py -k "graph or wait"
    local data ab=/tmp/airbench
    data=$(cd "$DATA" && pwd)
    mkdir -p "$ab"
    step airbench_prep 90 bash -c "cd $ab && $PY $data/anchors/prep_cifar.py $data/cifar10-jpeg.tar.gz"
    step airbench 120 bash -c "cd $ab && RUNS=6 $PY $data/anchors/airbench94.py"
    step pool_cost 45 $PY benchmarks/pool_cost.py --device "$DEVICE" $QUICK
    step speedrun_graphed 100 $PY benchmarks/speedrun.py --device "$DEVICE" $QUICK --data "$CIFAR" \
        --cache-dir "$CACHE" --no-reference
    step speedrun_autotune 100 $PY benchmarks/speedrun.py --device "$DEVICE" $QUICK --data "$CIFAR" \
        --cache-dir "$CACHE" --no-reference --autotune
    step step_profile_autotune 60 $PY benchmarks/step_profile.py --device "$DEVICE" $QUICK --models speednet \
        --cuda-graphs on --autotune
    step throughput_fused 150 $PY benchmarks/throughput.py --device "$DEVICE" $QUICK \
        --modes eager,graphed,compiled-graphed
}

case $STAGE in
all) tests; speed; throughput; seed_report; data ;;
A) tests; speed ;;
B) throughput; data ;;
inspect) inspect ;;
race) race ;;
feed) feed ;;
open) open_issues ;;
lent) lent ;;
next) next ;;
*)
    echo "usage: benchmarks/gpu_session.sh [all|A|B|inspect|race|feed|open|lent|next]" >&2
    exit 2
    ;;
esac
echo "== finished at $SECONDS s" | tee -a "$OUT/steps.txt"
