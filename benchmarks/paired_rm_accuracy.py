"""Two reward models' accuracy on the same test pairs, paired: the difference per pair (B right - A right, in
{-1, -0.5, ..., 1}; a tie counts half) with its 95 % normal interval, overall and per length bin.

    python benchmarks/paired_rm_accuracy.py runs/rm-debias-ft-baseline runs/rm-debias-ft-covariate \
        --sources '[hh-rlhf-harmless]' --head harmless --out benchmarks/results/rm_length_debias/paired.json

A difference whose interval excludes 0 is a gain of B over A on these pairs; two separate Wilson intervals
that overlap say nothing either way.

A or B may be an ensemble: its members' folders joined by commas (``runs/rm-s0,runs/rm-s1``), scored as PPO's
``reward.ensemble`` scores (``reward_models.ensemble.RewardEnsemble``: each member's head standardised by its own
saved mean/std, then ``--aggregate`` mean | uwo | wco over the members).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch
    import yaml

    from reward_models.data import load_pairs
    from reward_models.losses import pairwise_wins
    from reward_models.report import LENGTH_BINS, length_bins, score_for_report
    from reward_models.scoring import RewardScorer
    from rlhf.evaluation.metrics import mean_interval

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--sources", default="[hh-rlhf-harmless]", help="YAML list of shipped sources")
    parser.add_argument("--extra-files", default="[]", help="YAML list of preference files, split by conversation")
    parser.add_argument("--split", default="test")
    parser.add_argument("--head", default="harmless")
    parser.add_argument("--similar-tokens", type=int, default=5)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--aggregate", default="mean", help="ensembles: mean | uwo | wco over the members")
    parser.add_argument("--uwo-lambda", type=float, default=0.0, help="ensembles, aggregate uwo: λ of mean − λ·var")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    pairs = load_pairs(yaml.safe_load(args.sources), yaml.safe_load(args.extra_files), args.split)
    wins, bins = {}, None
    for name, path in (("a", args.a), ("b", args.b)):
        members = path.split(",")
        scorer = RewardScorer.from_pretrained(members[0], toxicity=None, precision=args.precision)
        scored = score_for_report(scorer, pairs, scorer.batch_size)  # labels and length bins (member 0's tokens)
        on = scored.labelled[args.head]
        diff = scored.diff[args.head][on] if len(members) == 1 else ensemble_diff(members, pairs, args)[on]
        wins[name] = pairwise_wins(diff, torch.zeros_like(diff)).tolist()  # 1 right, 0.5 tie, 0 wrong
        bins = [b for b, keep in zip(length_bins(scored.length_diff, args.similar_tokens), on.tolist()) if keep]

    def compare(rows: list[int]) -> dict:
        deltas = [wins["b"][i] - wins["a"][i] for i in rows]
        mean, low, high = mean_interval(deltas)
        return {"n": len(rows), "a": sum(wins["a"][i] for i in rows) / len(rows),
                "b": sum(wins["b"][i] for i in rows) / len(rows), "delta": mean, "low": low, "high": high}

    everything = list(range(len(bins)))
    result = {"a": args.a, "b": args.b, "head": args.head, "split": args.split, "sources": args.sources,
              "extra_files": args.extra_files,
              "aggregate": args.aggregate, "uwo_lambda": args.uwo_lambda,
              "overall": compare(everything),
              "bins": {b: compare([i for i in everything if bins[i] == b]) for b in LENGTH_BINS
                       if any(x == b for x in bins)}}
    for label, entry in [("overall", result["overall"]), *result["bins"].items()]:
        print(f"{label}: n={entry['n']} A {entry['a']:.3f} B {entry['b']:.3f} "
              f"B-A {entry['delta']:+.3f} [{entry['low']:+.3f}, {entry['high']:+.3f}]")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


def ensemble_diff(members: list[str], pairs, args):
    """(pairs,) the ensemble's aggregated ``args.head`` score of chosen minus that of rejected (wco and uwo
    aggregate each response's scores, so the difference is taken after aggregating, not per member)."""
    from reward_models.ensemble import RewardEnsemble

    ensemble = RewardEnsemble.from_pretrained(members, toxicity=None, precision=args.precision,
                                              aggregate=args.aggregate, uwo_lambda=args.uwo_lambda)
    prompts = [p.prompt for p in pairs]
    chosen = ensemble.score(prompts, [p.chosen for p in pairs]).heads[args.head]  # (pairs,)
    rejected = ensemble.score(prompts, [p.rejected for p in pairs]).heads[args.head]  # (pairs,)
    return chosen - rejected


if __name__ == "__main__":
    main()
