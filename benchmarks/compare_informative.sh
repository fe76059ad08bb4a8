#!/usr/bin/env bash
# Issue 23: the comparison of compare_eos_free.sh again, with judges that a non-answer cannot flatter, and with the
# two critic-free estimators it lacked (GRPO, REINFORCE++).
#   flock /tmp/rlhf-cpu.lock benchmarks/compare_informative.sh      # ~2 h on 2 bf16 CPU cores (AMD EPYC)
# Why: against the SmolLM2 judges of compare_disjoint_gold.sh, RL gained on the disjoint gold up to KL ~3 and then
# learned to decline ("I'm sorry, I'm unable to provide that information"), and both golds paid for it; the proxy
# recipe preferred a non-answer to the best answer on all 63 test questions (benchmarks/results/informative_pairs/).
# Here every judge reads the default sources, which now include truthfulqa-informative (best answer > non-answer).
#   1. proxy        SmolLM2-135M, LoRA on its top 4 layers, 600 pairs per head, seed 1, the `proxy` half (the recipe
#                   of compare_disjoint_gold.sh; the same run as informative_pairs.sh SMOLLM2=1's informative arm)
#   2. gold         the same recipe on the `gold` half, seed 0: disjoint pairs, same family
#   3. gold-minilm  MiniLM-L6 fully fine-tuned on the gold half: another family too, the second judge (rejudge.py)
#   4. rloo         RLOO, 4 prompts x 4 samples a step, lr 3e-4, no truncation penalty: compare_eos_free.sh's
#                   recipe, 100 steps, the checkpoints of steps 75 and 100 kept
#   5. grpo         the same with GRPO's group-normalised advantages
#   6. reinforce_pp REINFORCE++ (batch-whitened return-to-go, no critic, no group), 16 prompts x 1 sample a step
#   7. compare      SFT, best-of-1/2/4 and every kept checkpoint on the 96 test prompts and sampling seeds of the
#                   earlier comparisons; proxy, gold, judge-free metrics; then the same responses rescored by the
#                   MiniLM gold and counted again: refusals, ROUGE-L per prompt
# (The published run trained the MiniLM gold last, after the comparison; the stages are independent and seeded.)
# Needs the SFT start, runs/demo/sft/final (`make demo`), or SFT=DIR; it trains its own judges.
# A stage whose run finished (its summary.json) is skipped, so the script resumes. OUT=DIR writes the results elsewhere.
# Results: benchmarks/results/compare_informative/ (compare.md, report.md, results.json, recount.md,
# rejudged_gold_minilm.md, plots, timings.tsv, cpu.txt).
set -uo pipefail
out=${OUT:-benchmarks/results/compare_informative}
proxy_run=ip-smollm2-proxy-informative gold_run=cin-gold-smollm2 gold2_run=cin-gold-minilm  # read by stages.sh
source "$(dirname "$0")/stages.sh"  # $py, $sft, ${common[@]}, the shared recipes, stage, finished_runs, ...

stage proxy "$proxy_run" "${smollm2_judge[@]}" --run.seed 1 "${common[@]}" || exit 1
stage gold "$gold_run" "${smollm2_judge[@]}" --role gold --run.seed 0 "${common[@]}" || exit 1
stage gold-minilm "$gold2_run" "${minilm_gold[@]}" "${common[@]}"

rl=("${eos_free_rl[@]}" --reward.model "runs/$proxy_run/final" --train.save_total_limit 2 "${common[@]}")
group=(--rl.samples_per_prompt 4 --update.batch_size 4)
stage rloo rloo-informative "${rl[@]}" --rl.algo rloo "${group[@]}" || exit 1
stage grpo grpo-informative "${rl[@]}" --rl.algo grpo "${group[@]}"
stage reinforce_pp reinforce_pp-informative "${rl[@]}" --rl.algo reinforce_pp --update.batch_size 16

rl_runs=$(finished_runs rloo-informative grpo-informative reinforce_pp-informative)
judged_comparison compare cin-compare "$out" --rl_runs "[$rl_runs]" --best_of_n '[1, 2, 4]' || exit 1
record_machine
