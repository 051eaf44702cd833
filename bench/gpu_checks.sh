#!/usr/bin/env bash
# The CUDA checks of one GPU lease, in one command (device time is short: each step has its own limit
# and the whole script ends by TOTAL seconds, 560 unless set).  Figures go to OUTDIR/<step>.txt.
#
#     bench/gpu_checks.sh OUTDIR [LA_DATA]
#
# 1. bench/train_step.py --device cuda --shape real --profile 5
#                          each stage's step against a supervised step; wall against GPU kernel time
# 2. bench/infer.py --device cuda      seconds per volume, bf16 labels against fp32
# 2b. (STEPS=... compile) the ACDC fine-tuning step eager, then with the networks under torch.compile,
#    in one lease (an H100 gave 25.48 and 24.86 it/s, 2026-11-27: no gain; README *Speed*)
# 3. bench/small_la.py --device cuda --budget 2000, seeds 1337, 1, 2, both arms (LA 4 + 12 unlabeled,
#    8 held out): the six arms run at once, each its own process on the one GPU, so that they fit in
#    what is left of the lease (the timings above are taken alone, before them).  On an H100 the six
#    took 494 s (2026-11-27, `STEPS=small_la TOTAL=545`); an arm cut off after its model was written finishes with
#    `bench/small_la.py ... --resume --out /tmp/la_<arm>_<seed>` on the same (warm) machine.
# STEPS (default "train_step infer small_la") picks the steps, in that order.  LA_ARMS (default
# "actionpp supervised") picks step 3's arms, LA_SET a config override for its ACTION++ arms, e.g.
# LA_SET=pseudo_threshold_mode=classwise LA_ARMS=actionpp (LA's default before 2026-11-27, +6.41 over
# supervised-only at 2000 iterations on an H100: the comparison the balanced default still needs).
set -u
OUT=${1:-gpu_checks}
LA=${2:-../shared/data/LA}
PY=${PYTHON:-python3}
TOTAL=${TOTAL:-560}
STEPS=${STEPS:-train_step infer small_la}
LA_ARMS=${LA_ARMS:-actionpp supervised}
LA_SET=${LA_SET:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

step() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v "USDT:" | tee "$OUT/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, h5py, scipy, medpy.metric; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" 2>&1 | tee -a "$OUT/gpu.txt"
has() { [[ " $STEPS " == *" $1 "* ]]; }
has train_step && step train_step 200 $PY bench/train_step.py --device cuda --shape real --iterations 10 --rounds 2 --warm 3 --profile 5
has infer && step infer 60 $PY bench/infer.py --device cuda --repeats 3
has compile && step eager 60 $PY bench/train_step.py --device cuda --shape real --presets acdc --phases finetune \
  --iterations 10 --rounds 2 --warm 5
has compile && step compile 240 $PY bench/train_step.py --device cuda --shape real --presets acdc --phases finetune \
  --iterations 10 --rounds 2 --warm 5 --compile default
# 2c. (STEPS=... panel_quick) the panel's quick training: ACDC at 256x256 (the preset's size), 600
#    iterations, 3 patients, the ablation's arms at seed 1337 (the CPU figures, three seeds, are in
#    docs/BENCHMARKS.md: an ACTION++ arm there took 31-35 min at one thread; ACDC_DATA, default
#    ../shared/data/ACDC)
has panel_quick && step panel_quick 400 $PY bench/small_acdc.py --data "${ACDC_DATA:-../shared/data/ACDC}" \
  --device cuda --size 256 --budget 600 --seeds 1337 --arms supervised,supervised_paste,paste_only,actionpp \
  --out /tmp/panel_quick
has small_la || exit 0

left=$((TOTAL - SECONDS - 10))
echo "== small_la: arms ${LA_ARMS} x seeds 1337 1 2 at once${LA_SET:+, ACTION++ with $LA_SET}, limit ${left} s"
start=$SECONDS
for seed in 1337 1 2; do
  for arm in $LA_ARMS; do
    extra=()
    [[ $arm == actionpp && -n $LA_SET ]] && extra=(--set "$LA_SET")
    OMP_NUM_THREADS=2 timeout "$left" $PY bench/small_la.py --data "$LA" --device cuda --budget 2000 --seeds "$seed" \
      --arms "$arm" "${extra[@]}" --out "/tmp/la_${arm}_$seed" > "/tmp/la_${arm}_$seed.log" 2>&1 &
  done
done
wait
echo "== small_la: done after $((SECONDS - start)) s"
for f in /tmp/la_*.log; do
  echo "== $f"
  grep -v "^  \[" "$f"
  echo "-- last progress lines:"
  grep "^  \[" "$f" | tail -4
done > "$OUT/small_la.txt"
grep -H "mean Dice" /tmp/la_*.log  # the file names the arm and the seed
