#!/usr/bin/env bash
# LA arms for one GPU lease (issue 9: with the spec's classmix ACTION++ was behind supervised-only on LA at
# 2000 iterations, 49.63 / 45.27 against 56.16 / 46.52 at seeds 1337 / 1 on an H200, README).  Each line
# of ABLATIONS is one ACTION++ arm (`--arms actionpp`) as "SEED [KEY=VALUE ...]"; the first two are the
# defaults (the box mix, cutmix; the balanced mask since 2026-11-27), which the CPU runs favour; the
# third is the classwise thresholds, the default before.  Figures go to OUTDIR/<n>.txt.
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
  "1337"
  "1"
  "1337 pseudo_threshold_mode=classwise"
  "1337 reliability_gate=false"
)
n=0
for sets in "${ABLATIONS[@]}"; do
  n=$((n + 1))
  read -r seed rest <<< "$sets"
  args=()
  for kv in $rest; do args+=(--set "$kv"); done
  echo "== $n: $sets"
  timeout "$LIMIT" $PY bench/small_la.py --data "$LA" --device cuda --budget 2000 --seeds "$seed" --arms actionpp \
    "${args[@]}" --out "/tmp/la_ablation_$n" 2>&1 | grep -v "^  \[" | tee "$OUT/$n.txt"
done
