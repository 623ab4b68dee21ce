#!/usr/bin/env bash
# Compare the forgetting methods on the demo data (README, "Comparing forgetting methods"):
# the demo recipe (make demo) under every method, over SEEDS, one run at a time on one core,
# then one table of method x generation (python -m utils.report).
#
#   benchmarks/compare_forgetting.sh                       # 6 generations x 8 epochs, seeds 0-2
#   GENERATIONS=4 EPOCHS=6 OUT=/tmp/forget benchmarks/compare_forgetting.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
GENERATIONS=${GENERATIONS:-6}
EPOCHS=${EPOCHS:-8}
SEEDS=${SEEDS:-"0 1 2"}
OUT=${OUT:-checkpoints/compare_forgetting}
DATA=${DATA:-$OUT/datasets}
mkdir -p "$OUT/runs" "$DATA"

declare -A METHODS=(
  [ke]=""
  [shrink_perturb]="--forget shrink_perturb"
  [reinit]="--forget reinit"
  [none]="--forget none"
  [long]="--forget none --lr_policy long_cosine_lr"
  [ke_born_again]="--distill_previous"
)
for seed in $SEEDS; do
  for method in ke shrink_perturb reinit none long ke_born_again; do
    name="${method}_s${seed}"
    [ -f "$OUT/runs/$name/$name.csv" ] && [ -f "$OUT/runs/$name/summary.md" ] && continue
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=1 "$PY" train_KE_cls.py --set SyntheticShapes --data "$DATA" --image_size 32 \
      --split_rate 0.75 --num_generations "$GENERATIONS" --epochs "$EPOCHS" --lr 0.1 \
      --warmup_length 1 --test_interval "$EPOCHS" --num_threads 0 --cache_images \
      --keep_checkpoints last --seed "$seed" --log-dir "$OUT/runs" --name "$name" \
      ${METHODS[$method]} > "$OUT/$name.log" 2>&1
    echo "$name done: $(tail -n 1 "$OUT/runs/$name/$name.csv")"
  done
done
"$PY" -m utils.report "$OUT"/runs/* --out "$OUT/summary"
