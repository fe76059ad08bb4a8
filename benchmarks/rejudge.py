"""A third judge for a finished comparison: score its saved samples with another reward model.

    python benchmarks/rejudge.py --run runs/compare-proxy-smollm2 --judge runs/rm-minilm-half/final \
        --out benchmarks/results/compare_smollm2_proxy/rejudged_minilm.md

`rlhf compare` judges with the proxy and one gold. When the gold shares the proxy's backbone family or part of
its data, a gain on the gold may be agreement between two similar models rather than alignment. This rescoring
asks a judge of another family the same question, on the very same responses (nothing is sampled again): per
method its mean composite, the paired difference to the plain SFT run, and for best-of-n the same-draw
difference to best-of-1, each with its 95 % interval over prompts.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # our package
sys.path.insert(0, str(ROOT / "benchmarks"))  # common, as the other benchmarks import it

from common import cpu_info, load_average  # noqa: E402
from pipelines.compare import paired_difference, same_draw_deltas, saved_comparison, scores_by_variant  # noqa: E402
from reward_models.scoring import RewardScorer  # noqa: E402
from rlhf.evaluation import metrics  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="an rlhf compare / rlhf eval run folder (samples.jsonl)")
    parser.add_argument("--judge", required=True, help="a reward model folder that judges the saved responses")
    parser.add_argument("--out", required=True, help="markdown file to write")
    args = parser.parse_args()
    run = Path(args.run)
    results, records, baseline = saved_comparison(run)

    start = time.monotonic()
    scorer = RewardScorer.from_pretrained(args.judge, toxicity=None)
    scores = scorer.score([r["prompt"] for r in records], [r["response"] for r in records]).composite.tolist()
    for r, s in zip(records, scores):
        r["judge/composite"] = s
    seconds = time.monotonic() - start

    by_variant = scores_by_variant(records, "judge/composite")
    vs_sft = {variant: paired_difference(mine, by_variant[baseline]) for variant, mine in by_variant.items()
              if variant != baseline}
    same_draw = same_draw_deltas(results, records, judge="judge")
    fmt = "{:.3f} [{:.3f}, {:.3f}]".format
    lines = [f"# {run.name} rejudged by `{args.judge}`", "",
             f"`python benchmarks/rejudge.py --run {args.run} --judge {args.judge} --out {args.out}`; "
             f"{len(records)} responses scored in {seconds:.0f} s; CPU {cpu_info()['model_name']}, load average "
             f"{load_average()[0]:.2f}; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| variant | prompts | judge composite | Δ vs SFT (paired) | Δ vs best-of-1 (same draw) |",
             "|---|---|---|---|---|"]
    for variant in dict.fromkeys(r["variant"] for r in records):
        mine = [r["judge/composite"] for r in records if r["variant"] == variant]
        lines.append(f"| {variant} | {len(mine)} | {fmt(*metrics.mean_interval(mine))} | "
                     f"{fmt(*vs_sft[variant]) if vs_sft.get(variant) else '–'} | "
                     f"{fmt(*same_draw[variant]) if variant in same_draw else '–'} |")
    lines += ["", "Composite on the judge's own scale (its heads standardised on its dev split). An interval that "
                  "crosses 0 is no gain shown."]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
