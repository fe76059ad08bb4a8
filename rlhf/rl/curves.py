"""The reward/KL curve of an RL run (any algorithm) as a PNG (for notes and reports)."""
from __future__ import annotations

from pathlib import Path

from rlhf.core.tracking import read_metrics


def last_per_step(records: list[dict]) -> list[dict]:
    """A resumed run appends to metrics.jsonl: keep the last record of each step."""
    by_step = {r["step"]: r for r in records}
    return [by_step[s] for s in sorted(by_step)]


def plot_reward_and_kl(metrics_file: str | Path, out_png: str | Path, kl_target: float | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = last_per_step([r for r in read_metrics(metrics_file) if isinstance(r.get("reward/composite"), float)])
    evals = last_per_step([r for r in read_metrics(metrics_file) if isinstance(r.get("eval/reward/composite"), float)])
    steps = [r["step"] for r in records]
    fig, (ax_reward, ax_kl) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_reward.plot(steps, [r["reward/composite"] for r in records], marker=".", label="per step")
    window = max(1, len(records) // 8)
    smooth = [sum(r["reward/composite"] for r in records[max(0, i - window + 1):i + 1]) / len(records[max(0, i - window + 1):i + 1])
              for i in range(len(records))]
    ax_reward.plot(steps, smooth, label=f"running mean ({window})")
    if evals:
        ax_reward.plot([r["step"] for r in evals], [r["eval/reward/composite"] for r in evals], marker="s",
                       color="black", label="held-out prompts")
    ax_reward.set(xlabel="step", ylabel="reward/composite", title="reward")
    ax_reward.legend()
    ax_kl.plot(steps, [r["objective/kl"] for r in records], marker=".", color="tab:red", label="objective/kl")
    if evals:
        ax_kl.plot([r["step"] for r in evals], [r["eval/objective/kl"] for r in evals], marker="s", color="black",
                   label="held-out prompts")
    if kl_target:
        ax_kl.axhline(kl_target, linestyle="--", color="gray", label=f"target {kl_target:g}")
    ax_kl.set(xlabel="step", ylabel="KL(policy || reference) per response (nats)", title="KL")
    ax_kl.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
