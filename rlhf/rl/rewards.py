"""From reward-model scores and log-probs to the per-token reward PPO optimises.

reward[t] = -kl_coef * KL_t                          for every response token t
reward[last] += shaped score                         at the response's last token (its EOS, if any)
(the advantage estimators may replace each score by a baseline-corrected one first: advantages.py)
shaped score = clip(normalise(score - missing_eos_penalty * [no EOS]), +-clip) + overlong penalty (rl.overlong_buffer)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def merge_moments(mean: float, var: float, count: float, batch: torch.Tensor) -> tuple[float, float, float]:
    """Chan et al.'s parallel update of a running mean and (population) variance with a new batch."""
    batch = batch.double()
    n = batch.numel()
    if n == 0:
        return mean, var, count
    batch_mean, batch_var = batch.mean().item(), batch.var(unbiased=False).item()
    total = count + n
    delta = batch_mean - mean
    new_mean = mean + delta * n / total
    m2 = var * count + batch_var * n + delta**2 * count * n / total
    return new_mean, m2 / total, total


@dataclass
class RunningMoments:
    """Running mean/std of scores for reward normalisation; part of every checkpoint."""

    mean: float = 0.0
    var: float = 1.0
    count: float = 0.0

    def update(self, scores: torch.Tensor) -> None:
        self.mean, self.var, self.count = merge_moments(self.mean, self.var, self.count, scores)

    @property
    def std(self) -> float:
        return max(self.var, 0.0) ** 0.5

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])


def shape_scores(scores: torch.Tensor, has_eos: torch.Tensor, missing_eos_penalty: float,
                 moments: RunningMoments | None, clip: float, eps: float = 1e-8) -> torch.Tensor:
    """(B,) raw scores -> (B,) scores PPO uses; ``moments`` must already include this batch."""
    shaped = scores.float() - missing_eos_penalty * (~has_eos).float()
    if moments is not None:
        shaped = (shaped - moments.mean) / (moments.std + eps)
    if clip > 0:
        shaped = shaped.clamp(-clip, clip)
    return shaped


def place_scores(scores: torch.Tensor, penalty: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards: ``penalty`` (B, R) on every token, plus each score (B,) on its response's last token."""
    rewards = penalty * mask  # (B, R), a new tensor
    last = (mask.sum(1).long() - 1).clamp(min=0)  # (B,) index of each response's last token
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards


def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment: (B,) response lengths in tokens -> (B,) non-positive score terms.

    0 up to ``max_new_tokens - buffer``; then linear in the overflow into the buffer, reaching ``-penalty`` at
    ``max_new_tokens``; ``-penalty`` beyond it. ``buffer`` 0: no penalty."""
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    overflow = (lengths.float() - (max_new_tokens - buffer)).clamp(min=0.0)  # tokens into the buffer
    return -penalty * (overflow / buffer).clamp(max=1.0)
