#!/usr/bin/env bash
# The CUDA checks of one GPU lease, in one command (device time is short: each step has its own limit
# and the whole script fits in ~8 minutes on an H100/H200).  Figures go to OUTDIR/<step>.txt.
#
#     bench/gpu_checks.sh OUTDIR [LA_DATA]
#
# 1. bench/train_step.py --device cuda --shape real   each stage's step against a supervised step
# 2. bench/infer.py --device cuda                     seconds per volume, bf16 labels against fp32
# 3. bench/small_la.py --device cuda                  LA 4 + 12 unlabeled, 8 held out, seeds 1337,1,2
set -u
OUT=${1:-gpu_checks}
LA=${2:-../shared/data/LA}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

step() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
step train_step 170 $PY bench/train_step.py --device cuda --shape real --iterations 10 --rounds 2 --warm 3
step infer 80 $PY bench/infer.py --device cuda --repeats 3
step small_la 240 $PY bench/small_la.py --data "$LA" --device cuda --seeds 1337,1,2 --out /tmp/small_la
