"""A reward recipe over several seeds: each seed's harmless accuracy (dev, test overall, test per length bin), and
the mean over seeds with its 95 % Student-t interval, so that one lucky seed is not read as the recipe.

    python benchmarks/rm_seeds.py ms-covariate ms-baseline --seeds 0 1 2 3 4 \
        --paired 'paired-ms-s{seed}.json' --out benchmarks/results/rm_length_debias/seeds.md

Reads, per recipe R and seed S, ``benchmarks/results/rm_length_debias/R-sS/rm_report.json`` (written by
``rm_length_debias.sh R-sS``) and ``runs/rm-debias-R-sS/summary.json`` (its dev accuracy). ``--paired`` names the
``paired_rm_accuracy.py`` outputs of each seed (B − A on the same test pairs); their per-seed differences are
averaged the same way. The interval over seeds measures how much the recipe moves with its seed; each seed's
Wilson or paired interval measures the test sample. A target is met by the recipe when the mean over seeds is.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

RESULTS = Path("benchmarks/results/rm_length_debias")
BINS = ("chosen shorter", "similar", "chosen longer")
# two-sided 95 % Student-t quantiles by degrees of freedom (n seeds - 1); beyond the table, the normal's 1.96
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def seed_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of values over seeds: mean ± t(0.975, n−1)·sd/√n; (mean, nan, nan) for one seed."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def recipe_rows(recipe: str, seeds: list[int]) -> dict[str, list[float]]:
    """Metric name -> one value per seed."""
    rows: dict[str, list[float]] = {"dev": [], "test": [], **{b: [] for b in BINS}, "picks the longer": []}
    for seed in seeds:
        report = json.loads((RESULTS / f"{recipe}-s{seed}" / "rm_report.json").read_text())
        summary = json.loads(Path(f"runs/rm-debias-{recipe}-s{seed}/summary.json").read_text())
        length = report["length"]["harmless"]
        rows["dev"].append(summary["dev/accuracy_harmless"])
        rows["test"].append(report["accuracy"]["harmless"]["accuracy"])
        for b in BINS:
            rows[b].append(length["bins"][b]["accuracy"])
        rows["picks the longer"].append(length["picks_longer"]["accuracy"])
    return rows


def fmt(values: list[float]) -> str:
    mean, low, high = seed_interval(values)
    return f"**{mean:.3f}** [{low:.3f}, {high:.3f}] ({', '.join(f'{v:.3f}' for v in values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+", help="run-name prefixes: R for the runs R-s0, R-s1, ...")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--paired", default="", help="file name pattern with {seed}, under the results folder")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    lines = [f"Harmless head over seeds {', '.join(map(str, args.seeds))}: mean [95 % t-interval over seeds] "
             "(each seed's value)", ""]
    metrics = ("dev", "test", *BINS, "picks the longer")
    lines += ["| recipe | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for recipe in args.recipes:
        rows = recipe_rows(recipe, args.seeds)
        lines.append(f"| {recipe} | " + " | ".join(fmt(rows[m]) for m in metrics) + " |")
    if args.paired:
        paired = [json.loads((RESULTS / args.paired.format(seed=s)).read_text()) for s in args.seeds]
        first = paired[0]
        lines += ["", f"Paired on the same test pairs, B − A per seed (B = {first['b']}, A = {first['a']}, "
                      "seed 0's names): mean [95 % t-interval over seeds] (each seed's difference)", "",
                  "| | overall | " + " | ".join(BINS) + " |", "|---" * (len(BINS) + 2) + "|",
                  "| B − A | " + " | ".join(fmt([p[k]["delta"] if k == "overall" else p["bins"][k]["delta"]
                                                   for p in paired]) for k in ("overall", *BINS)) + " |"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
