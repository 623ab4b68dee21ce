#!/usr/bin/env bash
# One GPU check, at most 9 minutes on one GPU (its steps' timeouts add up to 520 s): the tests
# marked `gpu`; the train step (bf16); the input pipeline; one epoch end to end, fp32 against
# bf16 + channels-last (crops batched on the GPU), with nvidia-smi's busy fraction; the images/s
# of 1, 2 and 4 concurrent ResNet-18 training runs at 224 px on the one GPU (a sweep with
# --runs_per_gpu 1, 2 and 4, stopped after 40 s), each with the busy fraction; the syncs per
# training step under torchrun with 1 process (benchmarks/gpu_throughput.py).
# Prints one table to paste into RESULTS.md, and appends it there with the raw lines.
#     bash benchmarks/gpu_check.sh            (from the repository root; PYTHON=... to pick one)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: CUDA is not available on this machine; nothing was checked" >&2
    exit 1
fi
OUT=$(mktemp -d)
step() { echo "== $*"; }

SMI_PID=
smi_start() { nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200 > "$OUT/smi_$1.txt" 2>/dev/null & SMI_PID=$!; }
smi_stop() { kill $SMI_PID 2>/dev/null || true; wait $SMI_PID 2>/dev/null || true; }
# busy fraction: the mean of nvidia-smi's utilisation samples (% of time a kernel ran)
busy() { awk '{s+=$1; n++} END {if (n) printf "%.0f%% (%d samples)", s/n, n; else print "no samples"}' "$OUT/smi_$1.txt"; }
# images/s of sweep points from their logs' epoch lines (`... | 1.2s, eta 0:03:10`), the first
# epoch of each left out (warm-up); every epoch of the Flowers-shaped set is its 1,020 images
FLOWERS_TRAIN=1020
rate() {
    for log in "$@"; do
        grep -o '| [0-9.]*s, eta' "$log" 2>/dev/null | tail -n +2 | tr -d '|s,' \
            | awk -v n="$FLOWERS_TRAIN" '{t+=$1; e++} END {if (e && t > 0) printf "%.0f\n", n*e/t}'
    done | awk '{s+=$1; k++; each=each sep $1; sep=" + "} END {if (k) printf "%d img/s (%d runs: %s)", s, k, each; else print "failed"}'
}
trap 'kill $SMI_PID 2>/dev/null || true; rm -rf "$OUT"' EXIT

step "tests marked gpu"
timeout 150 "$PY" -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/tests.txt" | tail -5 || true

step "train step, Split_ResNet18 224 px batch 32, bf16 + channels-last"
timeout 45 "$PY" benchmarks/bench_train_step.py --device cuda --arch Split_ResNet18 --batch_size 32 --amp bf16 --channels_last --rounds 3 2>&1 | tee "$OUT/step.txt" | tail -4 || true

step "input pipeline"
timeout 60 "$PY" benchmarks/bench_input.py --device cuda --workers 8 2>&1 | tee "$OUT/input.txt" | tail -4 || true

step "one epoch end to end, fp32 against bf16 + channels-last, crops batched on the GPU"
smi_start epoch
timeout 70 "$PY" benchmarks/bench_epoch.py --device cuda --cache_images --batched_crops --workers 8 2>&1 | tee "$OUT/epoch.txt" | tail -4 || true
smi_stop

FLOWERS=$("$PY" benchmarks/flowers_like.py | tail -1)
for K in 1 2 4; do
    step "$K concurrent ResNet-18 runs at 224 px, bf16, on the one GPU (sweep --runs_per_gpu $K)"
    smi_start "runs$K"
    # stopped by SIGTERM after 40 s: the sweep stops its points resumably; their logs stay
    timeout -k 10 40 "$PY" -m trainers.sweep --name "runs$K" --log-dir "$OUT/sweeps" \
        --grid "seed=1-$K" --runs_per_gpu "$K" -- --data "$FLOWERS" --set Flower102Pytorch \
        -a Split_ResNet18 --image_size 224 -b 32 --num_generations 1 --epochs 200 \
        --test_interval 200 --cache_images --amp bf16 --channels_last > "$OUT/runs$K.txt" 2>&1 || true
    smi_stop
    grep -h "at once on GPU" "$OUT/runs$K.txt" || tail -3 "$OUT/runs$K.txt"
    rate "$OUT/sweeps/runs$K"/logs/*.log; echo
done

step "syncs per training step under torchrun, 1 process (torch.cuda.set_sync_debug_mode)"
timeout 45 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 benchmarks/gpu_throughput.py --seconds 5 --count_syncs 2>&1 | tee "$OUT/syncs.txt" | grep throughput | tail -1 || true
SYNCS=$(grep -ho 'syncs/step [0-9.]* ([^)]*)' "$OUT/syncs.txt" | tail -1)

{
    echo
    echo "## GPU check, $(date -u +%Y-%m-%d) ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
    echo
    echo "Command: \`bash benchmarks/gpu_check.sh\` at commit $(git rev-parse --short HEAD)."
    echo
    echo "| measure | result |"
    echo "|---|---|"
    echo "| tests marked gpu | $(tail -1 "$OUT/tests.txt") |"
    echo "| train step, ResNet-18 224 px, batch 32, bf16 | $(grep -v '^#' "$OUT/step.txt" | tail -1 | cut -c1-120) |"
    echo "| input pipeline, 8 workers | $(grep -v '^#' "$OUT/input.txt" | tail -1 | cut -c1-160) |"
    echo "| epoch end to end, fp32 vs bf16 + channels-last | $(grep -v '^#' "$OUT/epoch.txt" | tail -1 | cut -c1-160) |"
    echo "| GPU busy during that epoch (nvidia-smi) | $(busy epoch) |"
    for K in 1 2 4; do
        echo "| $K concurrent ResNet-18 runs (--runs_per_gpu $K), 224 px, bf16 | $(rate "$OUT/sweeps/runs$K"/logs/*.log), GPU busy $(busy "runs$K") |"
    done
    echo "| syncs per step, torchrun with 1 process | ${SYNCS:-failed} |"
} > "$OUT/table.md"
echo
cat "$OUT/table.md"
cat "$OUT/table.md" >> benchmarks/RESULTS.md
grep -q " passed" "$OUT/tests.txt" && ! grep -q "failed" "$OUT/tests.txt"
