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
#   record_machine                CPU model, bf16 flags and load average into $out/cpu.txt
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

record_machine() {
  lscpu | grep -E 'Model name|bf16' | sed 's/Flags:.*\(avx512_bf16\|amx_bf16\).*/bf16 flags: \1/' > "$out/cpu.txt"
  uptime >> "$out/cpu.txt"
}
