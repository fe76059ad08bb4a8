"""Each policy loss (and DAPO's shaping) on the toy GRPO task: same tiny policy, prompts and seeds.

    PYTHONPATH=. python benchmarks/rl_losses_tiny.py --steps 30

A tiny random Llama (rlhf.ppo.toy) learning the toy reward (share of one token), GRPO, 4 prompts x 4 samples per
step: a smoke comparison of the losses' mechanics, not of their quality on a real task (there is no gold judge
here). Prints reward (first and last 10 steps), KL and entropy over the last 10 steps, per variant.
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
    "gspo": ["--rl.policy_loss", "gspo", "--ppo.clip_range", "3e-4", "--ppo.clip_range_high", "4e-4"],
    "clip + dynamic sampling + overlong 4": ["--rl.dynamic_sampling", "true", "--rl.overlong_buffer", "4"],
}
GROUP = ["--rl.algo", "grpo", "--ppo.batch_size", "4", "--rl.samples_per_prompt", "4", "--ppo.mini_batch_size", "8",
         "--ppo.micro_batch_size", "4", "--kl.coef", "0.05"]


def run(overrides: list[str], steps: int, folder: Path) -> list[dict[str, float]]:
    from rlhf.config import RunConfig
    from rlhf.ppo.toy import build_toy_trainer

    trainer = build_toy_trainer(folder, RunConfig(output_dir=str(folder / "runs"), run_name="x", wandb_mode="disabled"),
                                [*GROUP, *overrides])
    return [trainer.step() for _ in range(steps)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    print("| variant | reward, first 10 steps | reward, last 10 | KL, last 10 (nats/response) | entropy, last 10 |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in VARIANTS.items():
            history = run(overrides, args.steps, Path(tmp))
            first, last = history[:10], history[-10:]
            print(f"| {name} | {mean(first, 'reward/composite'):.3f} | {mean(last, 'reward/composite'):.3f} | "
                  f"{mean(last, 'objective/kl'):.2f} | {mean(last, 'objective/entropy'):.2f} |", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
