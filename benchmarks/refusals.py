"""How often each policy of a finished comparison refuses: its saved responses counted again, nothing sampled.

    python benchmarks/refusals.py --run runs/cee-compare --out benchmarks/results/compare_eos_free/refusals.md

A reward whose honest head learned from TruthfulQA (where "I have no comment" is a true answer) and whose harmless
head learned from HH (where declining is the safe reply) pays for refusing everything, and a gold judge trained
on the same kind of pairs pays too. This table is the judge-free check: per variant and source, the share of
responses with a refusal phrase (``rlhf.evaluation.metrics.is_refusal``) with its Wilson interval and n, and the
paired difference to the plain SFT run on the same prompts. `rlhf compare` shows the overall share in compare.md
since the column was added; this script gives it for runs made before, and per source.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # our package

from pipelines.compare import paired_difference, scores_by_variant  # noqa: E402
from rlhf.core.tracking import read_metrics  # noqa: E402
from rlhf.evaluation import metrics  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="an rlhf compare / rlhf eval run folder (samples.jsonl)")
    parser.add_argument("--out", required=True, help="markdown file to write")
    args = parser.parse_args()
    run = Path(args.run)
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    records = read_metrics(run / "samples.jsonl")
    for r in records:
        r["refused"] = float(metrics.is_refusal(r["response"]))
    baseline = next(v["key"] for v in results["variants"] if v["policy"] == results.get("baseline", "sft")
                    and v.get("decoding") == "sampled" and not v.get("best_of") and not v.get("shots"))
    sources = sorted({r["source"] for r in records})
    cell = "{:.2f} [{:.2f}, {:.2f}]; {}".format
    lines = [f"# Refusals in {run.name}", "",
             f"`python benchmarks/refusals.py --run {args.run} --out {args.out}`; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| variant | " + " | ".join(f"refusals ({s})" for s in ["all", *sources]) + " | Δ vs SFT (all, paired) |",
             "|---|" + "---|" * (len(sources) + 2)]
    by_variant = scores_by_variant(records, "refused")
    for variant in dict.fromkeys(r["variant"] for r in records):
        cells = []
        for source in ["all", *sources]:
            mine = [r["refused"] for r in records if r["variant"] == variant and source in ("all", r["source"])]
            cells.append(cell(sum(mine) / len(mine), *metrics.wilson_interval(sum(mine), len(mine)), len(mine))
                         if mine else "–")
        delta = paired_difference(by_variant[variant], by_variant[baseline]) if variant != baseline else None
        lines.append(f"| {variant} | " + " | ".join(cells) + " | "
                     + ("{:+.2f} [{:+.2f}, {:+.2f}]".format(*delta) if delta else "–") + " |")
    lines += ["", "Share of responses with a refusal phrase, its 95 % Wilson interval and n; Δ: paired difference "
                  "to plain SFT samples on the same prompts (normal interval). The phrases over-count a little and "
                  "miss paraphrases; they are the same for every variant."]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
