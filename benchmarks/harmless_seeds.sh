#!/usr/bin/env bash
# Issue 23, the harmless target (>= 0.68 overall, >= 0.55 where the chosen answer is longer) judged over five seeds,
# not one: the fine-tuned MiniLM harmless head of rm_length_debias.sh with and without the length covariate.
#   flock /tmp/rlhf-cpu.lock benchmarks/harmless_seeds.sh     # ~85 min on 2 fp32 cores (AVX2 AMD EPYC), resumable
# Why: two seeds of the covariate head gave 0.689 and 0.653, and the README read the first as the target met by one
# seed. Here each recipe runs with seeds 0-4 (the first two repeat the published ft-* runs), then
#   1. paired_rm_accuracy.py, covariate - baseline on the same 193 test pairs, per seed (paired-ms-s<seed>.json);
#   2. the five seeds of each recipe as one ensemble, mean and wco (paired-ensemble5-ms-baseline-vs-covariate-*.json;
#      mean also on dev, -mean-dev.json);
#   3. rm_seeds.py: each recipe's mean over seeds with its 95 % t-interval (seeds.md).
# LEN256=1 adds the covariate head reading 256 tokens (the reward stage's default) instead of the probe's 160,
# seeds 0 and 1, paired against the 160-token head of the same seed.
# Results: benchmarks/results/rm_length_debias/ms-*/ (rm_report.*), paired-ms-*.json, seeds.md, cpu.txt, timings.tsv
# (the published run predates timings.tsv: its training seconds are in each run's summary.json).
set -uo pipefail
out=benchmarks/results/rm_length_debias
source "$(dirname "$0")/stages.sh"  # $py, $timings, record_machine
ft=(--model.freeze_backbone false --train.learning_rate 2e-4 --data.partition all)

train_head() {  # NAME flags...: one rm_length_debias.sh run unless it finished
  local name=$1; shift
  if [ -e "runs/rm-debias-$name/summary.json" ] && [ -e "$out/$name/rm_report.json" ]; then return 0; fi
  echo "== $name $(date -u +%T)"
  local t0=$SECONDS
  PYTHON=$py PRECISION=fp32 EPOCHS=1 benchmarks/rm_length_debias.sh "$name" "${ft[@]}" "$@"
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" $((SECONDS - t0)) "$rc" >> "$timings"  # as stages.sh's stage times its stages
  [ "$rc" = 0 ] || exit 1
}
paired() {  # A B OUT [flags]
  local a=$1 b=$2 dest=$3; shift 3
  [ -e "$out/$dest" ] || $py benchmarks/paired_rm_accuracy.py "$a" "$b" --out "$out/$dest" "$@" || exit 1
}

for seed in 0 1 2 3 4; do
  train_head "ms-covariate-s$seed" --train.length_covariate true --run.seed "$seed"
  train_head "ms-baseline-s$seed" --run.seed "$seed"
  paired "runs/rm-debias-ms-baseline-s$seed" "runs/rm-debias-ms-covariate-s$seed" "paired-ms-s$seed.json"
done
members() { echo runs/rm-debias-ms-$1-s{0,1,2,3,4} | tr ' ' ','; }
for aggregate in mean wco; do
  paired "$(members baseline)" "$(members covariate)" "paired-ensemble5-ms-baseline-vs-covariate-$aggregate.json" \
    --aggregate "$aggregate"
done
paired "$(members baseline)" "$(members covariate)" "paired-ensemble5-ms-baseline-vs-covariate-mean-dev.json" \
  --aggregate mean --split dev  # the same on dev: does the ensemble's test result hold on another held-out split?
if [ "${LEN256:-0}" = 1 ]; then
  for seed in 0 1; do
    train_head "ms-covariate-len256-s$seed" --train.length_covariate true --model.max_length 256 --run.seed "$seed"
    paired "runs/rm-debias-ms-covariate-s$seed" "runs/rm-debias-ms-covariate-len256-s$seed" \
      "paired-ms-covariate-len256-s$seed.json"
  done
fi
$py benchmarks/rm_seeds.py ms-baseline ms-covariate --paired 'paired-ms-s{seed}.json' --out "$out/seeds.md"
record_machine
