"""Which method aligns best? SFT, best-of-n, RL checkpoints and DPO, judged by the proxy and by a gold judge.

    rlhf compare --sft runs/demo/sft/final --proxy runs/demo/reward/final --gold runs/gold-smollm2-lora4 \\
                 --rl_runs '[runs/grpo-curve]' --dpo_runs '[runs/dpo-all]' --best_of_n '[1, 2, 4, 8, 16]'

One evaluation (``rlhf eval``, so the same held-out prompts, seeds and decoding for every method) of:
the SFT start; best-of-n samples of it picked by the proxy; every kept checkpoint of each RL run and its
final policy (``grpo@15``, ``grpo@30`` ... ``grpo@final``: the over-optimisation curve, at the KL each one
measures); each DPO run's final policy. Then ``compare.md``: one row per method with gold and proxy
(mean and 95 % CI), the gold's difference to SFT and win-rate against it, KL, ROUGE-L, length and the
training wall time, which is how the methods' CPU budgets are put side by side (best-of-n spends its
budget at sampling time: n samples per prompt and n proxy scores).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rlhf.core.config import ConfigError, RunConfig
from rlhf.evaluation.evaluate import ALL, EvalConfig, EvalDataConfig, GoldConfig, PolicyConfig, VariantConfig
from rlhf.models.generation import GenerationSettings
from rlhf.data.records import DIMENSIONS as HEADS
from rlhf.evaluation.overoptimisation import fit_curves, fit_lines
from rlhf.evaluation.report import best_of_n_points, gold_peaks, judge_free_table, plain_sampled, policy_points
from rlhf.core.tracking import read_metrics

DEFAULTS = None
STAGE = "compare"


@dataclass
class CompareConfig:
    """Methods from the same SFT start, judged on the same held-out prompts by the proxy and the gold."""

    sft: str = field(default="", metadata={"help": "the SFT policy every method starts from (its final/ folder)"})
    proxy: str = field(default="", metadata={"help": "the reward model the methods optimised or selected by"})
    gold: str = field(default="", metadata={"help": "a reward model no method optimised (rlhf reward --role gold)"})
    rl_runs: list[str] = field(default_factory=list,
                               metadata={"help": "RL run folders: each kept checkpoint and final/ is a point"})
    dpo_runs: list[str] = field(default_factory=list, metadata={"help": "DPO run folders (their final/ policy)"})
    best_of_n: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16],
                                 metadata={"help": "best-of-n from the SFT policy, picked by the proxy; [] = none"})
    prompts_per_source: int = field(default=16, metadata={"help": "held-out test prompts per source", "range": "[1, 100000]"})
    max_new_tokens: int = field(default=32, metadata={"help": "per response (as the RL runs sample)", "range": "[1, 100000]"})
    run: RunConfig = field(default_factory=lambda: RunConfig(wandb_mode="offline"))


def _run_config(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "config.yaml"
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def rl_method(run_dir: Path) -> str:
    """The curve an RL run's checkpoints are drawn on: its algorithm (from its config), plus the run's name
    when the name does not start with it (two GRPO runs are two curves)."""
    algo = (_run_config(run_dir).get("rl") or {}).get("algo", "ppo")
    return algo if run_dir.name.startswith(algo) else f"{algo}:{run_dir.name}"


def dpo_method(run_dir: Path, runs: int) -> str:
    return "dpo" if runs == 1 else f"dpo:{run_dir.name}"


def rl_policies(run_dir: Path, sft: str) -> list[PolicyConfig]:
    """``method@step`` for each kept checkpoint's adapter, and ``method@final`` unless the last checkpoint is
    the final step (the same weights); KL reference = SFT."""
    method = rl_method(run_dir)
    found = [PolicyConfig(f"{method}@{int(c.name.split('-')[-1])}", str(c / "adapter"), sft)
             for c in sorted((run_dir / "checkpoints").glob("step-*")) if (c / "adapter").is_dir()]
    train = _run_config(run_dir).get("train") or {}
    steps = train.get("max_steps", train.get("steps"))  # a run folder written before the key was renamed: steps
    if (run_dir / "final" / "adapter").is_dir() and not (found and found[-1].name == f"{method}@{steps}"):
        found.append(PolicyConfig(f"{method}@final", str(run_dir / "final" / "adapter"), sft))
    return found


def method_runs(cfg: "CompareConfig") -> dict[str, Path]:
    """method name -> its training run folder."""
    runs = {rl_method(Path(p)): Path(p) for p in cfg.rl_runs}
    runs.update({dpo_method(Path(p), len(cfg.dpo_runs)): Path(p) for p in cfg.dpo_runs})
    return runs


def training_seconds(run_dir: Path) -> float | None:
    """A training run's wall time from its metrics: the TRL trainer's own total (``train/runtime_s``, DPO), else
    the sum of its steps' times (``time/step_s``, the RL stage)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    records = read_metrics(path)
    total = [r["train/runtime_s"] for r in records if "train/runtime_s" in r]
    if total:
        return float(total[-1])
    steps = [r["time/step_s"] for r in records if "time/step_s" in r]
    return float(sum(steps)) if steps else None


def eval_config(cfg: CompareConfig) -> EvalConfig:
    """The evaluation that compares the methods: every policy sampled, best-of-n on SFT, both judges."""
    missing = [(key, path) for key, path in (("sft", cfg.sft), ("proxy", cfg.proxy), ("gold", cfg.gold))
               if not path or not Path(path).exists()]
    missing += [(f"rl_runs[{i}]", p) for i, p in enumerate(cfg.rl_runs) if not Path(p).is_dir()]
    missing += [(f"dpo_runs[{i}]", p) for i, p in enumerate(cfg.dpo_runs) if not (Path(p) / "final" / "adapter").is_dir()]
    if missing:
        key, path = missing[0]
        raise ConfigError(f"{key}: {path or '(empty)'} is not there (a folder written by the matching stage)")
    policies = [PolicyConfig("sft", cfg.sft)]
    for i, run in enumerate(map(Path, cfg.rl_runs)):
        found = rl_policies(run, cfg.sft)
        if not found:
            raise ConfigError(f"rl_runs[{i}]: {run} has no checkpoints/step-*/adapter and no final/adapter")
        policies += found
    policies += [PolicyConfig(dpo_method(run, len(cfg.dpo_runs)), str(run / "final" / "adapter"), cfg.sft)
                 for run in map(Path, cfg.dpo_runs)]
    if any(n < 1 for n in cfg.best_of_n):
        raise ConfigError(f"best_of_n: {list(cfg.best_of_n)} has n < 1 (each n is how many samples the proxy picks from)")
    variants = [VariantConfig(decoding="sampled")]
    if cfg.best_of_n:
        variants.append(VariantConfig(policies=["sft"], decoding="sampled", best_of_n=list(cfg.best_of_n)))
    return EvalConfig(run=cfg.run, policies=policies, reward_model=cfg.proxy, gold=GoldConfig(cfg.gold),
                      baseline="sft", candidate=policies[-1].name,
                      data=EvalDataConfig(prompts_per_source=cfg.prompts_per_source),
                      variants=variants, generation=GenerationSettings(max_new_tokens=cfg.max_new_tokens),
                      training_runs={"ppo": cfg.rl_runs[0]} if cfg.rl_runs else {})


def _cell(numbers: dict, key: str, digits: int = 3) -> str:
    """``mean [low, high]`` of a metric and its interval (``key_low``/``key_high``; a delta's ``key_low``)."""
    if key not in numbers:
        return "–"
    low, high = numbers.get(f"{key}_low"), numbers.get(f"{key}_high")
    interval = f" [{low:.{digits}f}, {high:.{digits}f}]" if low is not None and high is not None else ""
    return f"{numbers[key]:.{digits}f}{interval}"


def saved_comparison(run_dir: str | Path) -> tuple[dict, list[dict], str]:
    """(results.json, the samples.jsonl records, the plain baseline run's variant key) of a finished comparison:
    what a script that judges or counts its saved responses again reads (benchmarks/rejudge.py, recount.py)."""
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    baseline = next(v["key"] for v in plain_sampled(results) if v["policy"] == results.get("baseline", "sft"))
    return results, read_metrics(run_dir / "samples.jsonl"), baseline


def scores_by_variant(records: list[dict], key: str) -> dict[str, dict[tuple, float]]:
    """``key`` of every saved sample, by variant and then by prompt (source, id)."""
    by_variant: dict[str, dict[tuple, float]] = {}
    for r in records:
        if key in r:
            by_variant.setdefault(r["variant"], {})[(r["source"], r["id"])] = r[key]
    return by_variant


def paired_difference(mine: dict[tuple, float], base: dict[tuple, float],
                      confidence: float = 0.95) -> tuple[float, float, float] | None:
    """(mean, low, high) of ``mine - base`` over the prompts both scored; None with fewer than two."""
    from rlhf.evaluation import metrics

    diffs = [mine[item] - base[item] for item in mine if item in base]
    return metrics.mean_interval(diffs, confidence) if len(diffs) > 1 else None


def same_draw_deltas(results: dict, records: list[dict], judge: str = "gold") -> dict[str, tuple[float, float, float]]:
    """Per best-of-n variant: the paired difference of its ``judge`` composite to best-of-1 of the SAME draw
    (mean, low, high over prompts). Best-of-1 is a plain sample of the policy, so this isolates what the
    selection gained from the draw-to-draw noise that a comparison with the plain sampled run also carries."""
    by_variant = scores_by_variant(records, f"{judge}/composite")
    out = {}
    for group in results.get("best_of_n") or []:
        first = next((r for r in group["per_n"] if r["n"] == 1), None)
        if first is None:
            continue
        base = by_variant.get(first["variant"], {})
        for r in group["per_n"]:
            delta = paired_difference(by_variant.get(r["variant"], {}), base, results.get("confidence", 0.95))
            if r["n"] > 1 and delta is not None:
                out[r["variant"]] = delta
    return out


def comparison_rows(results: dict, seconds: dict[str, float | None],
                    records: list[dict] | None = None) -> list[list[str]]:
    """A header and one row per evaluated policy (sampled, zero-shot) and per best-of-n."""
    metrics = results.get("metrics", {})
    heads = [h for h in HEADS if any(f"gold/{h}" in m.get(ALL, {}) for m in metrics.values())]
    baseline = results.get("baseline", "sft")
    listed = []  # (label, KL, variant key, metrics on all sources, on DialogSum, training seconds or a word)
    for variant in plain_sampled(results):
        m = metrics[variant["key"]]
        wall = seconds.get(variant["policy"].split("@")[0])
        kl = 0.0 if variant["policy"] == baseline else m[ALL].get("kl/k1", float("nan"))  # the start itself
        listed.append((variant["policy"], kl, variant["key"], m[ALL], m.get("dialogsum", {}),
                       f"{wall:.0f}" if wall else "–"))
    for group in results.get("best_of_n") or []:
        for r in group["per_n"]:
            m = metrics[r["variant"]]
            listed.append((f"best-of-{r['n']} ({group['policy']})", r["kl"], r["variant"], m[ALL],
                           m.get("dialogsum", {}), "0 (samples n)"))
    same_draw = same_draw_deltas(results, records or [])
    rows = [["method", "KL to SFT", "proxy composite", "gold composite", "gold Δ vs SFT", "gold win-rate vs SFT",
             "gold Δ vs best-of-1 (same draw)", *[f"gold {h}" for h in heads], "ROUGE-L (DialogSum)",
             "ROUGE-L Δ vs SFT (paired)", "length", "refusals", "training s", "prompts"]]
    for label, kl, key, m, dialog, wall in listed:
        mean_low_high = same_draw.get(key)
        rows.append([label, f"{kl:.2f}", _cell(m, "reward/composite"), _cell(m, "gold/composite"),
                     _cell(m, "gold/composite_delta"), _win(m),
                     "{:.3f} [{:.3f}, {:.3f}]".format(*mean_low_high) if mean_low_high else "–",
                     *[_cell(m, f"gold/{h}") for h in heads],
                     f"{dialog['rouge/rougeL']:.3f}" if "rouge/rougeL" in dialog else "–",
                     _cell(dialog, "rouge/rougeL_delta"), f"{m.get('length', float('nan')):.1f}",
                     _refusals(m), wall, str(int(m.get("n", 0)))])
    return rows


def _refusals(m: dict) -> str:
    """The share of refusing responses with its Wilson interval over the ``n`` responses."""
    from rlhf.evaluation import metrics

    if "refusal_rate" not in m:
        return "–"
    low, high = metrics.wilson_interval(m["refusal_rate"] * m["n"], int(m["n"]))
    return f"{m['refusal_rate']:.2f} [{low:.2f}, {high:.2f}]"


def _win(m: dict) -> str:
    if "gold/win_rate" not in m:
        return "–"
    return f"{m['gold/win_rate']:.3f} [{m['gold/win_rate/low']:.3f}, {m['gold/win_rate/high']:.3f}]"


def write_comparison(run_dir: Path, results: dict, seconds: dict[str, float | None],
                     records: list[dict] | None = None) -> Path:
    rows = comparison_rows(results, seconds, records)
    lines = ["# Method comparison (held-out prompts; gold = a reward model no method optimised)", "",
             "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    lines += ["", "Means with 95 % intervals; Δ = paired difference to SFT on the same prompts (an interval that "
                  "crosses 0 is no gain shown). Best-of-n draws its own samples: its Δ vs SFT carries the draw-to-draw "
                  "noise that best-of-1 (a plain sample of SFT) shows, and the same-draw Δ isolates the selection. "
                  "KL: k1 estimate per response (best-of-n: log n − (n−1)/n). Refusals: share of responses with a "
                  "refusal phrase (rlhf.evaluation.metrics.is_refusal). ROUGE-L Δ: paired per DialogSum prompt "
                  "(the corpus ROUGE-L of two plain samples of one policy differs by points on a few dozen). "
                  "Training s: the run's wall time on this machine (best-of-n trains nothing and pays at sampling).",
              "", "See report.md for per-source tables and overoptimisation.png for gold and proxy vs √KL."]
    if results.get("judge_free"):
        lines += ["", "## Judge-free metrics", "", judge_free_table(results).markdown()]
    points = best_of_n_points(results) + policy_points(results)
    peaks = gold_peaks(points)
    if peaks:
        lines += ["", "## Where the gold peaks (over-optimisation)", "", *[f"- {line}" for line in peaks],
                  "", "Differences between neighbouring points smaller than their intervals above are noise."]
    fits = fit_lines(fit_curves(points))
    if fits:
        lines += ["", "## Gao et al. (2022) fits of the gold against d = √KL", "", *[f"- {line}" for line in fits],
                  "", "Least squares (rlhf.evaluation.overoptimisation): best-of-n R(d) = d(α − βd), RL and DPO R(d) = "
                      "d(α − β log d), R = gold − gold at d = 0; drawn dotted on overoptimisation.png. With as "
                      "few points as here α and β are descriptive, not predictions."]
    out = run_dir / "compare.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def main(cfg: CompareConfig) -> Path:
    from pipelines.evaluate import main as evaluate

    # 1. the evaluation: every method's policies (checked: one line naming the key before any model loads)
    ecfg = eval_config(cfg)
    # 2. it runs as rlhf eval does: report.md, results.json, overoptimisation.png in the run folder
    run_dir = evaluate(ecfg)
    # 3. the comparison table, with each training run's wall time
    seconds = {method: training_seconds(run) for method, run in method_runs(cfg).items()}
    results, records, _ = saved_comparison(run_dir)
    table = write_comparison(run_dir, results, seconds, records)
    print(f"[compare] {table}", file=sys.stderr)
    return run_dir


if __name__ == "__main__":  # the same as `rlhf compare ...` (rlhf.stages holds the command)
    from rlhf.stages import STAGES

    sys.exit(STAGES["compare"].cli(sys.argv[1:]))
