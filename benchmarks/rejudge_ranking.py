"""The sampled summaries of one `rlhf eval-rm --ranking.policy` report, ranked again by another reward model's
helpful head: the same summaries (nothing sampled again), so two heads are compared on identical inputs.

    python benchmarks/rejudge_ranking.py MODEL --samples-from benchmarks/results/helpful_ranking/minilm/rm_report.json \
        --out benchmarks/results/helpful_ranking/smollm2

Writes ranking.json (the report's ``ranking`` section: Spearman with ROUGE-L and with length, within a dialogue
and pooled, and every sample with its new score) and ranking.md. ``--baseline`` (another ranking.json or
rm_report.json of the same summaries) adds the paired difference of the within-dialogue correlations, with ROUGE-L
and with length.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from reward_models.ranking import HEAD, RankedSummary, RankingConfig, paired_within, ranking_report, ranking_table
    from reward_models.report import json_ready
    from reward_models.scoring import RewardScorer
    from rlhf.data.sources import dialogsum_items

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="reward model folder (or its run folder)")
    parser.add_argument("--samples-from", required=True, help="an rm_report.json with a ranking section")
    parser.add_argument("--out", required=True)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--baseline", help="a ranking.json or rm_report.json of the same summaries, by another head")
    args = parser.parse_args()

    source = json.loads(Path(args.samples_from).read_text())
    ranking = source["ranking"]
    rows = [RankedSummary(**r) for r in ranking["samples"]]
    prompt_of = {it.fname: it.prompt for it in dialogsum_items(source["split"])}
    scorer = RewardScorer.from_pretrained(args.model, toxicity=None, precision=args.precision)
    scores = scorer.score_heads([prompt_of[r.dialogue] for r in rows], [r.summary for r in rows])[HEAD].tolist()
    rows = [replace(r, score=s) for r, s in zip(rows, scores)]
    cfg = RankingConfig(policy=ranking["policy"], samples=ranking["samples_per_dialogue"],
                        max_new_tokens=ranking["max_new_tokens"], temperature=ranking["temperature"])
    section = {"model": args.model, "samples_from": args.samples_from,
               **ranking_report(rows, cfg, ranking["confidence"])}
    if args.baseline:
        baseline = json.loads(Path(args.baseline).read_text())
        baseline = baseline.get("ranking", baseline)  # an rm_report.json holds it as a section
        baseline_rows = [RankedSummary(**r) for r in baseline["samples"]]
        section["paired_vs_baseline"] = {"baseline": args.baseline, **{
            against: paired_within(rows, baseline_rows, against, ranking["confidence"]) for against in ("rouge_l", "words")}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ranking.json").write_text(json.dumps(json_ready(section), indent=2))
    (out / "ranking.md").write_text(f"# Helpful head of `{args.model}` on the summaries of `{args.samples_from}`\n\n"
                                    + ranking_table(section).markdown())
    within, pooled = section["rouge_l"]["within"], section["rouge_l"]["pooled"]
    print(f"within {within['mean']:.3f} ({within['low']:.3f}, {within['high']:.3f}) n={within['n']}; "
          f"pooled {pooled['spearman']:.3f} ({pooled['low']:.3f}, {pooled['high']:.3f}) n={pooled['n']}; "
          f"vs words: within {section['words']['within']['mean']:.3f}")
    if "paired_vs_baseline" in section:
        for against, d in section["paired_vs_baseline"].items():
            if against != "baseline":
                print(f"paired within ({against}), minus the baseline: {d['mean']:+.3f} [{d['low']:+.3f}, "
                      f"{d['high']:+.3f}] n={d['n']}")


if __name__ == "__main__":
    main()
