#!/usr/bin/env bash
# Judges that a non-answer cannot flatter: does adding `truthfulqa-informative` (a question's best answer over a
# non-answer of the same length) teach the honest head to rank "I'm sorry, I can't provide that information" below
# a true answer, without costing its accuracy on TruthfulQA's own pairs (correct > incorrect)?
#   flock /tmp/rlhf-cpu.lock benchmarks/informative_pairs.sh      # ~15 min on 2 CPU cores
#   SMOLLM2=1 flock /tmp/rlhf-cpu.lock benchmarks/informative_pairs.sh   # + the SmolLM2 proxies, ~25 min more
# Each arm trains the demo's two judges from the same seeds: the proxy (MiniLM fine-tuned, 160 pairs per head) with
# seeds 0 and 1, and the gold (a linear probe on frozen MiniLM, the gold half of the train pairs). Arm `base` reads
# the default sources, arm `informative` adds truthfulqa-informative. Then, on the test split, paired per pair
# (benchmarks/paired_rm_accuracy.py, B = informative minus A = base, 95 % interval):
#   - the informative pairs: best answer > non-answer (63 test questions);
#   - the same best answers over 5 non-answers worded otherwise, which no judge trained on (unseen-non-answers);
#   - TruthfulQA's own pairs: correct > incorrect (the honest head's job until now).
# Results: benchmarks/results/informative_pairs/ (one JSON per judge and pair set, table.md, timings.tsv, cpu.txt).
set -uo pipefail
out=${OUT:-benchmarks/results/informative_pairs}
source "$(dirname "$0")/stages.sh"  # $py, ${common[@]}, ${smollm2_judge[@]}, stage, record_machine

base_sources='[hh-rlhf-harmless, truthfulqa, dialogsum]'
informative_sources='[hh-rlhf-harmless, truthfulqa, truthfulqa-informative, dialogsum]'
# The demo's recipes (pipelines/configs/pipeline_demo.yaml: reward, gold).
proxy=(reward --train.epochs 1 --train.learning_rate 2e-4 --data.max_train_pairs_per_head 160
       --eval.max_pairs_per_head 32 --train.save_steps 0 "${common[@]}")
gold=(reward --role gold --model.freeze_backbone true --train.epochs 8 --train.head_learning_rate 0.1
      --train.save_steps 0 "${common[@]}")

for arm in base informative; do
  sources_var=${arm}_sources
  for seed in 0 1; do
    stage "proxy-$arm-s$seed" "ip-proxy-$arm-s$seed" "${proxy[@]}" --data.sources "${!sources_var}" \
      --run.seed "$seed" || exit 1
  done
  stage "gold-$arm" "ip-gold-$arm" "${gold[@]}" --data.sources "${!sources_var}" || exit 1
done
# SMOLLM2=1 also trains the judge family of compare_disjoint_gold.sh / compare_eos_free.sh, whose proxy PPO@100
# learned to decline against: SmolLM2-135M + LoRA on its top 4 layers, 600 pairs per head, seed 1 (~11 min each).
judges=("proxy-s0 ip-proxy-base-s0 ip-proxy-informative-s0" "proxy-s1 ip-proxy-base-s1 ip-proxy-informative-s1"
        "gold ip-gold-base ip-gold-informative")
if [ "${SMOLLM2:-0}" = 1 ]; then
  for arm in base informative; do
    sources_var=${arm}_sources
    stage "smollm2-proxy-$arm" "ip-smollm2-proxy-$arm" "${smollm2_judge[@]}" --run.seed 1 \
      --data.sources "${!sources_var}" "${common[@]}" || exit 1
  done
  judges+=("smollm2-proxy ip-smollm2-proxy-base ip-smollm2-proxy-informative")
fi

# Non-answers that no judge trained on (other words, 5-13 words), paired with the same best answers: does a head
# learn "a non-answer is worse" or only dislike the 7 shipped phrasings?
unseen=runs/ip-unseen-non-answers.jsonl
$py - "$unseen" <<'EOF' || exit 1
import sys
from rlhf.data import sources
from rlhf.data.records import write_jsonl
UNSEEN = ("I would rather not say.", "Sorry, I can't help with that.", "That's not something I can answer.",
          "Unfortunately, I do not have an answer for you on this topic.",
          "I'm afraid I cannot answer this question, as I lack the necessary information.")
assert not set(UNSEEN) & set(sources.NON_ANSWERS)
write_jsonl(sources.informative_pairs(sources.truthfulqa_items("all"), UNSEEN, source="unseen-non-answers"), sys.argv[1])
EOF

for judge in "${judges[@]}"; do
  read -r name a b <<< "$judge"
  [ -e "$out/$name.truthfulqa.json" ] && continue  # scored on an earlier run of this script
  for pairs in truthfulqa-informative truthfulqa; do
    $py benchmarks/paired_rm_accuracy.py "runs/$a/final" "runs/$b/final" --sources "[$pairs]" --head honest \
      --out "$out/$name.$pairs.json" || exit 1
  done
  $py benchmarks/paired_rm_accuracy.py "runs/$a/final" "runs/$b/final" --sources "[]" --extra-files "[$unseen]" \
    --head honest --out "$out/$name.unseen-non-answers.json" || exit 1
done
$py - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = ["| judge | test pairs | n | base | + informative | Δ [95 % CI] |", "|---|---|---|---|---|---|"]
for path in sorted(out.glob("*.json"), key=lambda p: (p.stem.split(".")[1], p.stem)):
    judge, pairs = path.stem.split(".")
    r = json.loads(path.read_text())["overall"]
    rows.append(f"| {judge} | {pairs} | {r['n']} | {r['a']:.3f} | {r['b']:.3f} "
                f"| {r['delta']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] |")
(out / "table.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
EOF
record_machine
