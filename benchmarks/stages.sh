# Sourced by the comparison scripts (compare_disjoint_gold.sh, compare_eos_free.sh): their shared setup. Set out=
# (the results folder) first. Gives $py, $sft (the SFT start), ${common[@]} (flags every stage takes), and:
#   stage NAME RUN rlhf-args...   `rlhf ARGS --run.run_name RUN` unless runs/RUN finished (its summary.json, which
#                                 every stage writes last), timed into $out/timings.tsv; returns the stage's exit
#   judged_comparison NAME RUN DEST compare-args...
#                                 `rlhf compare` on 32 test prompts per source, judged by runs/$proxy_run and
#                                 runs/$gold_run (as stage NAME RUN); its tables and plots copied into DEST, the same
#                                 responses rescored by runs/$gold2_run when it finished (rejudge.py) and counted
#                                 (recount.py). The judges default to compare_disjoint_gold.sh's; set them before
#                                 sourcing to compare with others.
#   finished_runs RUN...          "runs/A, runs/B" for those of the runs that finished (for --rl_runs, --dpo_runs)
#   record_machine                CPU model, bf16 flags and load average into $out/cpu.txt
# and the recipes the scripts share, so that a run one script trains is the run another reuses by name:
#   ${smollm2_judge[@]}  the SmolLM2 judge (2026-12-02): LoRA on the top 4 layers, 600 pairs per head; add role, seed
#   ${minilm_gold[@]}    the gold of another family: MiniLM-L6 fully fine-tuned on the gold half
#   ${eos_free_rl[@]}    compare_eos_free.sh's RL from $sft: no truncation penalty, 100 steps, lr 3e-4, a checkpoint
#                        every 25; add the reward model, the algorithm and its batch
py=${PYTHON:-.venv/bin/python}
sft=${SFT:-runs/demo/sft/final}
mkdir -p "$out"
export WANDB_MODE=${WANDB_MODE:-disabled}
timings=$out/timings.tsv
[ -f "$timings" ] || printf 'stage\tseconds\texit\n' > "$timings"
common=(--run.output_dir runs --run.wandb_mode disabled)
proxy_run=${proxy_run:-cdg-proxy-smollm2}
gold_run=${gold_run:-cdg-gold-smollm2}
gold2_run=${gold2_run:-cdg-gold-minilm}  # a gold of another family

smollm2_judge=(reward --model.name smollm2-135m-instruct --lora.enabled true --lora.layers '[-4,-3,-2,-1]'
               --train.learning_rate 2e-4 --data.max_train_pairs_per_head 600)
minilm_gold=(reward --role gold --model.name minilm-l6 --train.learning_rate 2e-4 --train.epochs 1
             --train.precision fp32 --run.seed 0)
eos_free_rl=(rl --model.name "$sft" --reward.missing_eos_penalty 0 --update.mini_batch_size 8 --train.max_steps 100
             --train.learning_rate 3e-4 --train.lr_scheduler constant --train.save_steps 25 --run.seed 0)

stage() {
  local name=$1 run=$2; shift 2
  if [ -e "runs/$run/summary.json" ]; then echo "== $name: runs/$run finished, skipped"; return 0; fi
  echo "== $name: $(date -u +%H:%M:%S) rlhf $* --run.run_name $run"
  local t0=$SECONDS
  $py -m rlhf.cli "$@" --run.run_name "$run"
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" $((SECONDS - t0)) "$rc" >> "$timings"
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  return $rc
}

judged_comparison() {
  local name=$1 run=$2 dest=$3; shift 3
  stage "$name" "$run" compare --sft "$sft" --proxy "runs/$proxy_run/final" --gold "runs/$gold_run/final" \
    --prompts_per_source 32 "$@" "${common[@]}" || return 1
  mkdir -p "$dest"
  cp "runs/$run"/{compare.md,report.md,results.json,config.yaml,*.png} "$dest"/
  if [ -e "runs/$gold2_run/summary.json" ]; then
    $py benchmarks/rejudge.py --run "runs/$run" --judge "runs/$gold2_run/final" --out "$dest/rejudged_gold_minilm.md"
  fi
  $py benchmarks/recount.py --run "runs/$run" --out "$dest/recount.md"
}

finished_runs() {
  local run list=""
  for run in "$@"; do
    [ -e "runs/$run/summary.json" ] && list="${list:+$list, }runs/$run"
  done
  echo "$list"
}

record_machine() {
  lscpu | grep -E 'Model name|bf16' | sed 's/Flags:.*\(avx512_bf16\|amx_bf16\).*/bf16 flags: \1/' > "$out/cpu.txt"
  uptime >> "$out/cpu.txt"
}
