#!/usr/bin/env bash
# The SmolLM2-proxy comparison re-run with a gold that shares no train pair with the proxy (issues 22 and 23).
#   flock /tmp/rlhf-cpu.lock benchmarks/compare_disjoint_gold.sh      # ~2.5 h on 2 bf16 CPU cores (AMD EPYC)
# The reward and DPO stages read halves of the `train` split's pairs (`data.partition`, by conversation hash): the
# proxy and DPO the `proxy` half, the golds the `gold` half. PPO samples its prompts from the whole train split
# (prompts only, no labels); evaluation reads `test` only.
#   1. proxy        SmolLM2-135M, LoRA on its top 4 layers, 600 pairs per head (the 2026-12-02 recipe), seed 1
#   2. gold         the same recipe on the gold half, seed 0: disjoint pairs, same family
#   3. gold-minilm  MiniLM-L6 fully fine-tuned on the gold half: another family too, the second judge (rejudge.py)
#   4. ppo-control  PPO on the proxy as it is (the 2026-12-02 recipe)
#   5. ppo-detrend  the same with length control (reward.length_detrend: the batch's reward made uncorrelated
#                   with response length)
#   6. dpo          DPO on the proxy half's pairs
#   7. compare      SFT, best-of-1..16, both PPO curves, DPO on 96 test prompts; proxy, gold, judge-free metrics,
#                   Gao et al.'s fits; then the same responses rescored by the MiniLM gold
# A stage whose run finished (its final/ or compare.md exists) is skipped, so the script resumes after an interruption.
# Results: benchmarks/results/compare_disjoint_gold/ (compare.md, report.md, results.json, plots, timings.tsv).
set -uo pipefail
py=${PYTHON:-.venv/bin/python}
sft=${SFT:-runs/demo/sft/final}
out=benchmarks/results/compare_disjoint_gold
mkdir -p "$out"
export WANDB_MODE=${WANDB_MODE:-disabled}
timings=$out/timings.tsv
[ -f "$timings" ] || printf 'stage\tseconds\texit\n' > "$timings"

stage() {  # stage NAME DONE rlhf-args...: runs `rlhf ARGS` unless the path DONE exists; times it
  local name=$1 done=$2; shift 2
  if [ -e "$done" ]; then echo "== $name: $done exists, skipped"; return 0; fi
  echo "== $name: $(date -u +%H:%M:%S) rlhf $*"
  local t0=$SECONDS
  $py -m rlhf.cli "$@"
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" $((SECONDS - t0)) "$rc" >> "$timings"
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  return $rc
}

common=(--run.output_dir runs --run.wandb_mode disabled)
ppo=(rl --rl.algo ppo --model.name "$sft" --update.batch_size 16 --update.mini_batch_size 8 --train.max_steps 60
     --train.learning_rate 3e-4 --train.lr_scheduler constant --train.save_steps 20 --run.seed 0 "${common[@]}")

stage proxy runs/cdg-proxy-smollm2/final reward --model.name smollm2-135m-instruct --lora.enabled true \
  --lora.layers '[-4,-3,-2,-1]' --train.learning_rate 2e-4 --data.max_train_pairs_per_head 600 --run.seed 1 \
  --run.run_name cdg-proxy-smollm2 "${common[@]}" || exit 1
stage gold runs/cdg-gold-smollm2/final reward --role gold --model.name smollm2-135m-instruct --lora.enabled true \
  --lora.layers '[-4,-3,-2,-1]' --train.learning_rate 2e-4 --data.max_train_pairs_per_head 600 --run.seed 0 \
  --run.run_name cdg-gold-smollm2 "${common[@]}" || exit 1
stage gold-minilm runs/cdg-gold-minilm/final reward --role gold --model.name minilm-l6 --train.learning_rate 2e-4 \
  --train.epochs 1 --train.precision fp32 --run.seed 0 --run.run_name cdg-gold-minilm "${common[@]}"
stage ppo-control runs/cdg-ppo-control/final "${ppo[@]}" --reward.model runs/cdg-proxy-smollm2/final \
  --run.run_name cdg-ppo-control || exit 1
stage ppo-detrend runs/cdg-ppo-detrend/final "${ppo[@]}" --reward.model runs/cdg-proxy-smollm2/final \
  --reward.length_detrend true --run.run_name cdg-ppo-detrend
stage dpo runs/cdg-dpo/final dpo --model.name "$sft" --train.max_steps 36 --run.seed 0 --run.run_name cdg-dpo "${common[@]}"

rl_runs=runs/cdg-ppo-control
[ -e runs/cdg-ppo-detrend/final ] && rl_runs="$rl_runs, runs/cdg-ppo-detrend"
dpo_runs=""
[ -e runs/cdg-dpo/final ] && dpo_runs=runs/cdg-dpo
stage compare runs/cdg-compare/compare.md compare --sft "$sft" --proxy runs/cdg-proxy-smollm2/final \
  --gold runs/cdg-gold-smollm2/final --rl_runs "[$rl_runs]" --dpo_runs "[$dpo_runs]" --prompts_per_source 32 \
  --run.run_name cdg-compare "${common[@]}" || exit 1
cp runs/cdg-compare/{compare.md,report.md,results.json,config.yaml,*.png} "$out"/ 2>/dev/null
[ -e runs/cdg-gold-minilm/final ] && $py benchmarks/rejudge.py --run runs/cdg-compare --judge runs/cdg-gold-minilm/final \
  --out "$out/rejudged_gold_minilm.md"
lscpu | grep -E 'Model name|bf16' | sed 's/Flags:.*\(avx512_bf16\|amx_bf16\).*/bf16 flags: \1/' > "$out/cpu.txt"
uptime >> "$out/cpu.txt"
