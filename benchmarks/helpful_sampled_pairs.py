"""Helpful preference pairs from sampled summaries ranked by ROUGE-L (issue #23's "a base-model sample ranked by
ROUGE-L against the reference"): the training counterpart of `rlhf eval-rm --ranking.policy`, and the recipe of
the shipped `data/dialogsum/sampled_pairs.jsonl.gz` (source `dialogsum-sampled`).

    # 1. sample summaries of the dialogues of a split (their ROUGE-L and text land in rm_report.json's ranking
    #    section); the shipped file: the train split (--ranking.dialogues 0 = all 397) and the test split (54)
    rlhf eval-rm RM --split train --sources '[dialogsum]' --ranking.policy smollm2-135m-instruct \
        --ranking.dialogues 0 --ranking.samples 4 --out benchmarks/results/helpful_ranking-runs/train-samples-all
    # 2. pairs: within each dialogue, every two samples whose ROUGE-L differs by at least --min-gap
    python benchmarks/helpful_sampled_pairs.py .../train-samples-all/rm_report.json .../test/rm_report.json \
        --out sampled_pairs.jsonl && gzip -n sampled_pairs.jsonl  # -> data/dialogsum/
    # 3. a helpful head trained on them: the source `dialogsum-sampled` (split and halved by dialogue like
    #    `dialogsum`), or any such file with --data.extra_files (--data.extra_files_split train checks that no
    #    pair's dialogue is in the shipped test split)
    rlhf reward --data.sources '[dialogsum-sampled]' --data.partition all

Each line is a preference record (prompt = the dialogue's summarise prompt, chosen = the sample with the higher
ROUGE-L against the reference, dimension helpful, source dialogsum-sampled).
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
    differ): the higher one is chosen. A text sampled for two dialogues ("Remarks.") is left out: it says nothing
    of either, and it would put one answer on both sides of the split."""
    from collections import defaultdict

    from reward_models.ranking import RankedSummary, by_dialogue

    dialogues_of: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        dialogues_of[s["summary"].strip()].add(s["dialogue"])
    rows = []
    for group in by_dialogue([RankedSummary(**s) for s in samples if len(dialogues_of[s["summary"].strip()]) == 1]):
        for a, b in itertools.combinations(group, 2):
            high, low = (a, b) if a.rouge_l >= b.rouge_l else (b, a)
            if high.rouge_l - low.rouge_l >= min_gap and high.summary.strip() != low.summary.strip():
                rows.append({"prompt": prompt_of[high.dialogue], "chosen": high.summary, "rejected": low.summary,
                             "dimension": ["helpful"], "source": "dialogsum-sampled"})
    return rows


def main() -> None:
    from rlhf.data.sources import dialogsum_items

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="rm_report.json files with a ranking section (their samples)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--min-gap", type=float, default=0.05, help="least ROUGE-L difference of a pair")
    args = parser.parse_args()
    samples = [s for report in args.reports for s in json.loads(Path(report).read_text())["ranking"]["samples"]]
    prompt_of = {it.fname: it.prompt for it in dialogsum_items("all")}
    rows = sampled_pairs(samples, prompt_of, args.min_gap)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    longer = sum(len(r["chosen"].split()) > len(r["rejected"].split()) for r in rows)
    print(f"{len(rows)} pairs from {len({r['prompt'] for r in rows})} dialogues; chosen longer in {longer}")


if __name__ == "__main__":
    main()
