#!/usr/bin/env bash
# One GPU check, at most 8 minutes on one GPU (its steps' timeouts add up to 470 s): the tests
# marked `gpu`, the train-step, input and epoch benchmarks on the device (the decoded cache,
# batches cropped and normalised on the GPU: --batched_crops), and nvidia-smi's utilisation
# sampled during an epoch. Appends a dated block to RESULTS.md.
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
trap 'kill $SMI 2>/dev/null || true; rm -rf "$OUT"' EXIT
SMI=
step() { echo "== $*"; }

step "tests marked gpu"
timeout 180 "$PY" -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/tests.txt" | tail -5

step "train step, Split_ResNet18 224 px batch 32, bf16 + channels-last"
timeout 60 "$PY" benchmarks/bench_train_step.py --device cuda --arch Split_ResNet18 --batch_size 32 --amp bf16 --channels_last --rounds 3 2>&1 | tee "$OUT/step.txt" | tail -4 || true

step "input pipeline"
timeout 90 "$PY" benchmarks/bench_input.py --device cuda --workers 8 2>&1 | tee "$OUT/input.txt" | tail -4 || true

step "one epoch end to end, crops per image in the workers"
timeout 70 "$PY" benchmarks/bench_epoch.py --device cuda --cache_images --workers 8 2>&1 | tee "$OUT/epoch_per_image.txt" | tail -4 || true

step "one epoch end to end, crops batched on the GPU, with nvidia-smi sampling"
nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200 > "$OUT/smi.txt" &
SMI=$!
timeout 70 "$PY" benchmarks/bench_epoch.py --device cuda --cache_images --batched_crops --workers 8 2>&1 | tee "$OUT/epoch.txt" | tail -4 || true
kill $SMI 2>/dev/null || true
BUSY=$(awk '$1 > 0 {busy++} {n++} END {if (n) printf "%.0f%% of %d samples non-idle, mean %.0f%%", 100*busy/n, n, s/n; else print "no samples"} {s+=$1}' "$OUT/smi.txt")
echo "GPU utilisation during the epoch: $BUSY"

{
    echo
    echo "## GPU check, $(date -u +%Y-%m-%d) ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
    echo
    echo "Command: \`bash benchmarks/gpu_check.sh\` at commit $(git rev-parse --short HEAD)."
    echo
    echo '```'
    echo "tests:  $(tail -1 "$OUT/tests.txt")"
    echo "step:   $(grep -v '^#' "$OUT/step.txt" | tail -3 | tr '\n' ' ')"
    echo "input:  $(grep -v '^#' "$OUT/input.txt" | tail -2 | tr '\n' ' ')"
    echo "epoch, crops per image:  $(grep -v '^#' "$OUT/epoch_per_image.txt" | tail -2 | tr '\n' ' ')"
    echo "epoch, crops batched:    $(grep -v '^#' "$OUT/epoch.txt" | tail -2 | tr '\n' ' ')"
    echo "nvidia-smi during the epoch: $BUSY"
    echo '```'
} >> benchmarks/RESULTS.md
grep -q " passed" "$OUT/tests.txt" && ! grep -q "failed" "$OUT/tests.txt"
