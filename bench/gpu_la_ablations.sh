#!/usr/bin/env bash
# LA ablations for one GPU lease (issue 9: ACTION++ is behind supervised-only on LA at 2000 iterations).
# Each line of ABLATIONS is one ACTION++ arm (`--arms actionpp`; supervised-only at the same budget and
# seeds is 56.16 / 46.52 on an H200, README).  Figures go to OUTDIR/<n>.txt.
#
#     bench/gpu_la_ablations.sh OUTDIR [LA_DATA]
set -u
OUT=${1:-gpu_la_ablations}
LA=${2:-../shared/data/LA}
PY=${PYTHON:-python3}
LIMIT=${LIMIT:-150}  # seconds per arm: ~115 s of training at 2000 iterations, then the evaluation
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
ABLATIONS=(
  "pseudo_threshold_mode=balanced"
  "reliability_gate=false"
  "weight_unsup=0"
)
n=0
for sets in "${ABLATIONS[@]}"; do
  n=$((n + 1))
  args=()
  for kv in $sets; do args+=(--set "$kv"); done
  echo "== $n: $sets"
  timeout "$LIMIT" $PY bench/small_la.py --data "$LA" --device cuda --budget 2000 --seeds 1337 --arms actionpp \
    "${args[@]}" --out "/tmp/la_ablation_$n" 2>&1 | grep -v "^  \[" | tee "$OUT/$n.txt"
done
