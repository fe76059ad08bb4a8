"""Each policy loss (and DAPO's shaping) on the toy GRPO task: same tiny policy, prompts and seeds.

    PYTHONPATH=. python benchmarks/rl_losses_tiny.py --steps 30
    PYTHONPATH=. python benchmarks/rl_losses_tiny.py --steps 30 --objectives   # reward objectives instead

A tiny random Llama (benchmarks/toy_task.py) learning the toy reward (share of one token), GRPO, 4 prompts x 4 samples per
step: a smoke comparison of the losses' mechanics, not of their quality on a real task (there is no gold judge
here). Prints reward (first and last 10 steps), KL and entropy over the last 10 steps, per variant.

``--objectives``: the reward objectives on the same task, with a second head of a much larger scale beside the
toy's (``word_count``, a reward function: 0-12 words against the toy's share in [0, 1]): the weighted sum, GDPO's
normalize_then_sum, and the Lagrangian (word count the objective, the toy head a constraint ``helpful >= tau``).
Prints each head's mean over the first and last 10 steps, and the multiplier's trajectory.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

VARIANTS = {
    "clip": [],
    "clip_higher": ["--rl.policy_loss", "clip_higher"],
    "gspo": ["--rl.policy_loss", "gspo", "--update.clip_range", "3e-4", "--update.clip_range_high", "4e-4"],
    "clip + dynamic sampling + overlong 4": ["--rl.dynamic_sampling", "true", "--rl.overlong_buffer", "4"],
}
FUNCTION = "benchmarks.rl_losses_tiny:word_count"
TAU = 0.2  # the constraint on the toy head (its share of the chosen token; ~0.1 at the start)
OBJECTIVES = {
    "sum (toy + word_count)": ["--reward.functions", f"[{FUNCTION}]"],
    "normalize_then_sum": ["--reward.functions", f"[{FUNCTION}]", "--reward.aggregation", "normalize_then_sum"],
    f"lagrangian (word_count s.t. toy >= {TAU})": [
        "--reward.functions", f"[{FUNCTION}]", "--reward.objective", "lagrangian",
        "--reward.constraints", f"{{helpful: {TAU}}}"],
}
GROUP = ["--rl.algo", "grpo", "--update.batch_size", "4", "--rl.samples_per_prompt", "4", "--update.mini_batch_size", "8",
         "--update.micro_batch_size", "4", "--kl.coef", "0.05"]


def word_count(prompts: list[str], completions: list[str]) -> list[float]:
    """A second reward head on a scale ~10x the toy's: words per completion."""
    return [float(len(c.split())) for c in completions]


def run(overrides: list[str], steps: int, folder: Path) -> list[dict[str, float]]:
    from rlhf.core.config import RunConfig
    from toy_task import build_toy_trainer

    trainer = build_toy_trainer(folder, RunConfig(output_dir=str(folder / "runs"), run_name="x", wandb_mode="disabled"),
                                [*GROUP, *overrides])
    return [trainer.step() for _ in range(steps)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--objectives", action="store_true", help="compare reward objectives instead of losses")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    if args.objectives:
        return objectives(args.steps, mean)
    print("| variant | reward, first 10 steps | reward, last 10 | KL, last 10 (nats/response) | entropy, last 10 |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in VARIANTS.items():
            history = run(overrides, args.steps, Path(tmp))
            first, last = history[:10], history[-10:]
            print(f"| {name} | {mean(first, 'reward/composite'):.3f} | {mean(last, 'reward/composite'):.3f} | "
                  f"{mean(last, 'objective/kl'):.2f} | {mean(last, 'objective/entropy'):.2f} |", flush=True)
    sys.stdout.flush()


def objectives(steps: int, mean) -> None:
    print("| objective | toy head, first 10 -> last 10 | word_count, first 10 -> last 10 | KL, last 10 | "
          "lambda at steps 1, 10, 20, last | violation (tau - toy mean), last 10 |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in OBJECTIVES.items():
            history = run(overrides, steps, Path(tmp))
            first, last = history[:10], history[-10:]
            lam = [history[i].get("lagrangian/lambda_helpful") for i in (0, 9, 19, len(history) - 1)]
            lam_text = ", ".join(f"{v:.2f}" for v in lam) if lam[0] is not None else "-"
            violation = (f"{mean(last, 'lagrangian/violation_helpful'):+.3f}"
                         if "lagrangian/violation_helpful" in last[0] else "-")
            print(f"| {name} | {mean(first, 'reward/helpful'):.3f} -> {mean(last, 'reward/helpful'):.3f} | "
                  f"{mean(first, 'reward/word_count'):.2f} -> {mean(last, 'reward/word_count'):.2f} | "
                  f"{mean(last, 'objective/kl'):.2f} | {lam_text} | {violation} |", flush=True)


if __name__ == "__main__":
    main()
