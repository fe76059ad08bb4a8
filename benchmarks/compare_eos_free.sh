#!/usr/bin/env bash
# Issue 23: does RL still shorten answers once truncation is not punished, and does it then beat SFT on the gold?
#   flock /tmp/rlhf-cpu.lock benchmarks/compare_eos_free.sh      # ~2 h on 2 bf16 CPU cores (AMD EPYC)
# Needs the proxy and the gold of benchmarks/compare_disjoint_gold.sh (runs/cdg-proxy-smollm2, runs/cdg-gold-smollm2,
# runs/cdg-gold-minilm): the same judges, the same SFT start, the same 96 test prompts and sampling seeds.
# Why: in that comparison PPO's answers fell from 26.9 to 17.8 tokens with or without length detrending. Its
# rollouts stop at generation.max_new_tokens 32, and over the first 5 steps only 51 % of them end with EOS; each of
# the others loses reward.missing_eos_penalty (1.0, taken off the score before normalisation). Stopping sooner is a
# cheap way up (EOS rate 0.94 over the last 10 steps). These runs set the
# penalty to 0: a response cut at 32 tokens is scored as it is, the way `rlhf compare` scores every policy.
#   1. ppo-eosfree   PPO, the compare_disjoint_gold recipe (batch 16, lr 3e-4), 100 steps, a checkpoint every 25
#   2. rloo-eosfree  RLOO, 4 prompts x 4 samples per step (the same 16 rollouts), otherwise the same
#   3. compare       SFT, best-of-1/2/4 and every checkpoint of both runs on 96 test prompts; proxy, gold,
#                    judge-free metrics, Gao et al.'s fits; then the same responses rescored by the MiniLM gold,
#                    and each variant's refusals per source and ROUGE-L's paired difference to SFT per prompt
#                    (benchmarks/recount.py)
#   4. rloo-eosfree-seed1, compare-seed1: RLOO again with seed 1 to 75 steps, compared with the same SFT samples
#                    (results in seed1/)
# A stage whose run finished (its summary.json) is skipped, so the script resumes. OUT=DIR writes the results elsewhere.
# Results: benchmarks/results/compare_eos_free/ (compare.md, report.md, results.json, rejudged_gold_minilm.md, recount.md,
# plots, timings.tsv; seed1/ for step 4).
set -uo pipefail
out=${OUT:-benchmarks/results/compare_eos_free}
source "$(dirname "$0")/stages.sh"  # $py, $sft, ${common[@]}, the shared recipes, stage, finished_runs, ...
for judge in "$proxy_run" "$gold_run"; do
  [ -e "runs/$judge/summary.json" ] || { echo "runs/$judge: missing; run benchmarks/compare_disjoint_gold.sh first"; exit 1; }
done

rl=("${eos_free_rl[@]}" --reward.model "runs/$proxy_run/final" --train.save_total_limit 0 "${common[@]}")

stage ppo-eosfree cee-ppo-eosfree "${rl[@]}" --rl.algo ppo --update.batch_size 16 || exit 1
stage rloo-eosfree cee-rloo-eosfree "${rl[@]}" --rl.algo rloo --rl.samples_per_prompt 4 --update.batch_size 4

judged_comparison compare cee-compare "$out" --rl_runs "[$(finished_runs cee-ppo-eosfree cee-rloo-eosfree)]" \
  --best_of_n '[1, 2, 4]' || exit 1

# 4. RLOO again with another seed (its samples and prompt order), to 75 steps, and its own comparison against the
#    same SFT samples: is RLOO@75's gain one lucky run?
stage rloo-eosfree-seed1 cee-rloo-eosfree-seed1 "${rl[@]}" --rl.algo rloo --rl.samples_per_prompt 4 \
  --update.batch_size 4 --run.seed 1 --train.max_steps 75 || exit 1
judged_comparison compare-seed1 cee-compare-seed1 "$out/seed1" --rl_runs '[runs/cee-rloo-eosfree-seed1]' \
  --best_of_n '[]' || exit 1

record_machine
