#!/usr/bin/env bash
# Length-debiased harmless reward heads (issue 23, point 1): one variant per call, same seed and steps.
#   benchmarks/rm_length_debias.sh NAME [extra reward-stage flags ...]
# Trains a MiniLM-L6 harmless head on the HH harmless train split, then `rlhf eval-rm` on its test split (length
# bins). 2 shared CPU cores: the backbone is frozen (a linear probe), its features computed once per text into the
# trunk cache that every variant shares, in bf16; so a variant costs its test scoring plus seconds of training.
# Results: benchmarks/results/rm_length_debias/NAME/ (rm_report.{json,md}) and runs/rm-debias-NAME/.
# A fine-tuned backbone instead of the probe: PRECISION=fp32 EPOCHS=1 benchmarks/rm_length_debias.sh ft-NAME
#   --model.freeze_backbone false --train.learning_rate 2e-4 --data.partition all [variant flags] (later flags win).
set -euo pipefail
name=$1; shift
py=${PYTHON:-python}
out=benchmarks/results/rm_length_debias/$name
$py -m rlhf.cli reward --model.name minilm-l6 --model.max_length 160 --model.freeze_backbone true --data.sources '[hh-rlhf-harmless]' \
  --train.epochs ${EPOCHS:-3} --train.batch_size 16 --train.precision ${PRECISION:-bf16} --train.save_steps 0 --eval.test false \
  --run.output_dir runs --run.run_name rm-debias-$name --run.wandb_mode disabled --run.seed 0 "$@"
$py -m rlhf.cli eval-rm runs/rm-debias-$name --sources '[hh-rlhf-harmless]' --split test --precision ${PRECISION:-bf16} --out "$out"
