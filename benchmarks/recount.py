"""A finished comparison's saved responses counted again, without a judge: refusals and ROUGE-L per prompt.

    python benchmarks/recount.py --run runs/cee-compare --out benchmarks/results/compare_eos_free/recount.md

Nothing is sampled or scored by a model. Two tables, each with 95 % intervals, n, and every variant's paired
difference to the plain SFT run on the same prompts:
- **Refusals** per source: the share of responses with a refusal phrase (``rlhf.evaluation.metrics.is_refusal``;
  Wilson intervals). A reward whose honest head learned from TruthfulQA (where "I have no comment" is a true answer)
  and whose harmless head learned from HH (where declining is the safe reply) pays for refusing everything, and a
  gold judge trained on the same kind of pairs pays too: this is the check that does not. compare.md shows the
  overall share since the column was added; this gives it per source, and for runs made before.
- **ROUGE-L per DialogSum prompt**: compare.md has one corpus number per method; on 32 sampled summaries it moves
  by points between two draws of the same policy, so a bar like "no more than 1 point below SFT" needs the paired
  difference and its interval.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # our package

from pipelines.compare import paired_difference, saved_comparison, scores_by_variant  # noqa: E402
from rlhf.evaluation import metrics  # noqa: E402
from rlhf.evaluation.evaluate import rouge_by_item  # noqa: E402

DELTA = "{:+.3f} [{:+.3f}, {:+.3f}]".format


def refusal_lines(records: list[dict], baseline: str) -> list[str]:
    sources = sorted({r["source"] for r in records})
    for r in records:
        r["refused"] = float(metrics.is_refusal(r["response"]))
    by_variant = scores_by_variant(records, "refused")
    lines = ["## Refusals", "", "| variant | " + " | ".join(f"refusals ({s})" for s in ["all", *sources])
             + " | Δ vs SFT (all, paired) |", "|---|" + "---|" * (len(sources) + 2)]
    for variant, mine in by_variant.items():
        cells = []
        for source in ["all", *sources]:
            hits = [r["refused"] for r in records if r["variant"] == variant and source in ("all", r["source"])]
            cells.append("{:.2f} [{:.2f}, {:.2f}]; {}".format(sum(hits) / len(hits), *metrics.wilson_interval(
                sum(hits), len(hits)), len(hits)) if hits else "–")
        delta = paired_difference(mine, by_variant[baseline]) if variant != baseline else None
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {DELTA(*delta) if delta else '–'} |")
    return lines + ["", "Share of responses with a refusal phrase, its 95 % Wilson interval and n. The phrases "
                        "over-count a little and miss paraphrases; they are the same for every variant."]


def rouge_lines(records: list[dict], baseline: str) -> list[str]:
    variants: dict[str, list[dict]] = {}
    for r in records:
        variants.setdefault(r["variant"], []).append(r)
    by_variant = {variant: {item: scores["rougeL"] for item, scores in rouge_by_item(mine).items()}
                  for variant, mine in variants.items()}  # as rlhf eval scores DialogSum: its one reference
    by_variant = {variant: mine for variant, mine in by_variant.items() if mine}
    lines = ["## ROUGE-L per DialogSum prompt", "",
             "| variant | ROUGE-L (mean over prompts, CI) | Δ vs SFT (paired) | prompts |", "|---|---|---|---|"]
    for variant, mine in by_variant.items():
        delta = paired_difference(mine, by_variant[baseline]) if variant != baseline else None
        lines.append("| {} | {:.4f} [{:.4f}, {:.4f}] | {} | {} |".format(
            variant, *metrics.mean_interval(list(mine.values())), DELTA(*delta) if delta else "–", len(mine)))
    return lines + ["", "ROUGE-L F-measure (Porter stemming) per prompt; its mean over prompts is compare.md's ROUGE-L."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="an rlhf compare / rlhf eval run folder (samples.jsonl)")
    parser.add_argument("--out", required=True, help="markdown file to write")
    args = parser.parse_args()
    _, records, baseline = saved_comparison(args.run)
    lines = [f"# {Path(args.run).name} counted again", "",
             f"`python benchmarks/recount.py --run {args.run} --out {args.out}`; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Δ: paired difference to plain SFT samples on the "
             "same prompts (normal 95 % interval; one that crosses 0 is no difference shown).", "",
             *refusal_lines(records, baseline), "", *rouge_lines(records, baseline)]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
