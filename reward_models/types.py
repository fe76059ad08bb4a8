"""The scoring contract between the reward model and its users (PPO, evaluation, annotation tools).

Anything with ``score(prompts, responses) -> RewardScores`` can stand in for the trained HHH reward
model: tests use toy scorers, PPO and evaluation use :class:`reward_models.scoring.RewardScorer`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch

from rlhf.data.records import DIMENSIONS

HEADS = DIMENSIONS  # one head per HHH dimension of the preference records, in the same order


@dataclass
class RewardScores:
    composite: torch.Tensor  # (batch,) the reward PPO optimises: weighted standardised heads - toxicity term
    heads: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (batch,) raw head scores
    toxicity: torch.Tensor | None = None  # (batch,) Detoxify probability in [0, 1]; None when unavailable
    # An ensemble of reward models (reward_models.ensemble) also says how much its members disagree:
    spread: torch.Tensor | None = None  # (batch,) std across members of their composites; None for one model
    head_spread: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (batch,) same, standardised heads

    def as_metrics(self, prefix: str = "reward") -> dict[str, float]:
        """Batch means under namespaced keys: reward/composite, reward/helpful, ..., toxicity, reward/spread."""
        metrics = {f"{prefix}/composite": self.composite.float().mean().item()}
        metrics.update({f"{prefix}/{name}": scores.float().mean().item() for name, scores in self.heads.items()})
        if self.toxicity is not None:
            metrics["toxicity"] = self.toxicity.float().mean().item()
        if self.spread is not None:
            metrics[f"{prefix}/spread"] = self.spread.float().mean().item()
            metrics.update({f"{prefix}/spread_{name}": s.float().mean().item() for name, s in self.head_spread.items()})
        return metrics

    def select(self, index: torch.Tensor) -> "RewardScores":
        """The scores of the rows at ``index`` (a mini-batch of rollouts)."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return RewardScores(self.composite[index], {k: v[index] for k, v in self.heads.items()}, pick(self.toxicity),
                            pick(self.spread), {k: v[index] for k, v in self.head_spread.items()})


class Scorer(Protocol):
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardScores:
        """Score each (prompt, response); prompts are plain text or HH transcripts."""
        ...
