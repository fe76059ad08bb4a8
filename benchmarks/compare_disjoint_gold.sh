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
#                   Gao et al.'s fits; then the same responses rescored by the MiniLM gold (rejudge.py) and
#                   counted again: refusals, ROUGE-L per prompt (recount.py)
# A stage whose run finished is skipped (its summary.json, which every stage writes last; final/ appears earlier, before
# the reward stage's test evaluation), so the script resumes after an interruption. OUT=DIR writes the results elsewhere.
# Results: benchmarks/results/compare_disjoint_gold/ (compare.md, report.md, results.json, rejudged_gold_minilm.md,
# recount.md, plots, timings.tsv).
set -uo pipefail
out=${OUT:-benchmarks/results/compare_disjoint_gold}
source "$(dirname "$0")/stages.sh"  # $py, $sft, ${common[@]}, the shared recipes, stage, finished_runs, ...
ppo=(rl --rl.algo ppo --model.name "$sft" --update.batch_size 16 --update.mini_batch_size 8 --train.max_steps 60
     --train.learning_rate 3e-4 --train.lr_scheduler constant --train.save_steps 20 --run.seed 0
     --reward.missing_eos_penalty 1.0 "${common[@]}")  # the default when these results were measured (now 0)

# The pair sources these judges and DPO were trained on: the default then (truthfulqa-informative joined it later).
pairs=(--data.sources '[hh-rlhf-harmless, truthfulqa, dialogsum]')

stage proxy cdg-proxy-smollm2 "${smollm2_judge[@]}" --run.seed 1 "${pairs[@]}" "${common[@]}" || exit 1
stage gold cdg-gold-smollm2 "${smollm2_judge[@]}" --role gold --run.seed 0 "${pairs[@]}" "${common[@]}" || exit 1
stage gold-minilm cdg-gold-minilm "${minilm_gold[@]}" "${pairs[@]}" "${common[@]}"
stage ppo-control cdg-ppo-control "${ppo[@]}" --reward.model runs/cdg-proxy-smollm2/final || exit 1
stage ppo-detrend cdg-ppo-detrend "${ppo[@]}" --reward.model runs/cdg-proxy-smollm2/final --reward.length_detrend true
stage dpo cdg-dpo dpo --model.name "$sft" --train.max_steps 36 --run.seed 0 "${pairs[@]}" "${common[@]}"

judged_comparison compare cdg-compare "$out" --rl_runs "[$(finished_runs cdg-ppo-control cdg-ppo-detrend)]" \
  --dpo_runs "[$(finished_runs cdg-dpo)]" || exit 1
record_machine
