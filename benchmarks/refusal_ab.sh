#!/usr/bin/env bash
# Does RL still learn to decline when the reward knows a non-answer is worse? (issue 23; after informative_pairs.sh)
#   flock /tmp/rlhf-cpu.lock benchmarks/refusal_ab.sh      # ~45 min on 2 bf16 CPU cores
# A/B from the same SFT start (runs/demo/sft/final) and seed, PPO with compare_eos_free.sh's recipe (16 rollouts a
# step, lr 3e-4, 100 steps, no missing-EOS penalty), optimising one of the two seed-0 MiniLM proxies of
# informative_pairs.sh, which differ only in the truthfulqa-informative pairs:
#   ppo-base         reward = runs/ip-proxy-base-s0         (prefers a non-answer on 92 % of test questions)
#   ppo-informative  reward = runs/ip-proxy-informative-s0  (prefers the true answer on 95 %)
# Then `rlhf eval` of SFT and both final policies on 24 test prompts per source (sampled, 32 new tokens), judged by
# the informative gold, and benchmarks/recount.py: the share of responses that decline, per source, paired against
# SFT. The judge-free count is what decides here; the judges are the demo's weak MiniLM ones.
# Results: benchmarks/results/refusal_ab/ (report.md, results.json, recount.md, timings.tsv, cpu.txt).
set -uo pipefail
out=${OUT:-benchmarks/results/refusal_ab}
source "$(dirname "$0")/stages.sh"  # $py, $sft, ${common[@]}, stage, record_machine
for proxy in ip-proxy-base-s0 ip-proxy-informative-s0 ip-gold-informative; do
  [ -e "runs/$proxy/summary.json" ] || { echo "runs/$proxy: missing; run benchmarks/informative_pairs.sh first"; exit 1; }
done

ppo=(rl --rl.algo ppo --model.name "$sft" --update.batch_size 16 --update.mini_batch_size 8 --train.max_steps 100
     --train.learning_rate 3e-4 --train.lr_scheduler constant --train.save_steps 50 --run.seed 0 "${common[@]}")
stage ppo-base ra-ppo-base "${ppo[@]}" --reward.model runs/ip-proxy-base-s0/final || exit 1
stage ppo-informative ra-ppo-informative "${ppo[@]}" --reward.model runs/ip-proxy-informative-s0/final || exit 1

policies="[{name: sft, model: $sft},
  {name: ppo-base, model: runs/ra-ppo-base/final/adapter, base: $sft},
  {name: ppo-informative, model: runs/ra-ppo-informative/final/adapter, base: $sft}]"
stage eval ra-eval eval --policies "$policies" --candidate ppo-informative \
  --reward_model runs/ip-proxy-informative-s0/final --gold.model runs/ip-gold-informative/final \
  --variants '[{decoding: sampled}]' --data.prompts_per_source 24 --generation.max_new_tokens 32 \
  --judge_free.preference_sources '[]' --judge_free.truthfulqa_mc false \
  --training_runs '{ppo: runs/ra-ppo-informative}' "${common[@]}" || exit 1
cp runs/ra-eval/{report.md,results.json} "$out"/
$py benchmarks/recount.py --run runs/ra-eval --out "$out/recount.md"
for run in ra-ppo-base ra-ppo-informative; do cp "runs/$run/metrics.jsonl" "$out/$run.metrics.jsonl"; done
record_machine
