"""ROUGE-L of a finished comparison per DialogSum prompt, and each variant's paired difference to plain SFT.

    python benchmarks/rouge_paired.py --run runs/cee-compare --out benchmarks/results/compare_eos_free/rouge_paired.md

`rlhf compare` reports one corpus ROUGE-L per method. On 32 sampled summaries that number moves by points from one
draw of the same policy to the next, so a bar like "no more than 1 point below SFT" needs the per-prompt paired
difference and its interval: this script scores the saved responses again (nothing is sampled).
"""
from __future__ import annotations

import argparse
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
    records = [r for r in read_metrics(Path(args.run) / "samples.jsonl")
               if r["source"] == "dialogsum" and r.get("references")]
    for r in records:  # the one reference summary, as DialogSum is scored (metrics.rouge)
        r["rougeL"] = metrics.rouge([r["response"]], [r["references"][0]])["rougeL"]
    by_variant = scores_by_variant(records, "rougeL")
    baseline = next(v for v in by_variant if v.endswith("/sampled") and v.startswith("sft/"))
    lines = [f"# ROUGE-L per prompt in {Path(args.run).name}", "",
             f"`python benchmarks/rouge_paired.py --run {args.run} --out {args.out}`; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| variant | ROUGE-L (mean over prompts, CI) | Δ vs SFT (paired, CI) | prompts |", "|---|---|---|---|"]
    fmt = "{:.4f} [{:.4f}, {:.4f}]".format
    for variant, mine in by_variant.items():
        delta = paired_difference(mine, by_variant[baseline]) if variant != baseline else None
        lines.append(f"| {variant} | {fmt(*metrics.mean_interval(list(mine.values())))} | "
                     f"{'{:+.4f} [{:+.4f}, {:+.4f}]'.format(*delta) if delta else '–'} | {len(mine)} |")
    lines += ["", "ROUGE-L F-measure against the one reference summary (Porter stemming), per prompt; means over "
                  "prompts equal compare.md's ROUGE-L. Normal 95 % intervals; an interval that crosses 0 is no "
                  "difference shown."]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
