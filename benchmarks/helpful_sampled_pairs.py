"""Helpful preference pairs from sampled summaries ranked by ROUGE-L (issue #23's "a base-model sample ranked by
ROUGE-L against the reference"): the training counterpart of `rlhf eval-rm --ranking.policy`.

    # 1. sample summaries of train dialogues (their ROUGE-L and text land in rm_report.json's ranking section)
    rlhf eval-rm RM --split train --sources '[dialogsum]' --ranking.policy smollm2-135m-instruct \
        --ranking.dialogues 100 --ranking.samples 3 --out benchmarks/results/helpful_ranking-runs/train-samples
    # 2. pairs: within each dialogue, every two samples whose ROUGE-L differs by at least --min-gap
    python benchmarks/helpful_sampled_pairs.py benchmarks/results/helpful_ranking-runs/train-samples/rm_report.json \
        --out benchmarks/results/helpful_ranking-runs/sampled_pairs.jsonl
    # 3. a helpful head trained on them (train dialogues only: --data.extra_files_split train checks it)
    rlhf reward --data.sources '[]' --data.extra_files '[.../sampled_pairs.jsonl]' --data.extra_files_split train \
        --data.partition all

Each line is a preference record (prompt = the dialogue's summarise prompt, chosen = the sample with the higher
ROUGE-L, dimension helpful, margin = the ROUGE-L gap).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sampled_pairs(samples: list[dict], prompt_of: dict[str, str], min_gap: float) -> list[dict]:
    """Within each dialogue, every two samples whose ROUGE-L differs by at least ``min_gap`` (and whose texts
    differ): the higher one is chosen."""
    from reward_models.ranking import RankedSummary, by_dialogue

    rows = []
    for group in by_dialogue([RankedSummary(**s) for s in samples]):
        for a, b in itertools.combinations(group, 2):
            high, low = (a, b) if a.rouge_l >= b.rouge_l else (b, a)
            if high.rouge_l - low.rouge_l >= min_gap and high.summary.strip() != low.summary.strip():
                rows.append({"prompt": prompt_of[high.dialogue], "chosen": high.summary, "rejected": low.summary,
                             "dimension": ["helpful"], "source": "dialogsum-sampled",
                             "margin": round(high.rouge_l - low.rouge_l, 4)})
    return rows


def main() -> None:
    from rlhf.data.sources import dialogsum_items

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="an rm_report.json with a ranking section (its samples)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--min-gap", type=float, default=0.05, help="least ROUGE-L difference of a pair")
    args = parser.parse_args()
    report = json.loads(Path(args.report).read_text())
    prompt_of = {it.fname: it.prompt for it in dialogsum_items(report["split"])}
    rows = sampled_pairs(report["ranking"]["samples"], prompt_of, args.min_gap)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    longer = sum(len(r["chosen"].split()) > len(r["rejected"].split()) for r in rows)
    print(f"{len(rows)} pairs from {len({r['prompt'] for r in rows})} dialogues; chosen longer in {longer}")


if __name__ == "__main__":
    main()
