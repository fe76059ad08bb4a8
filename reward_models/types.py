"""The scoring contract between the reward model and its users (PPO, evaluation, annotation tools).

Anything with ``score(prompts, responses) -> RewardScores`` can stand in for the trained HHH reward
model: tests use toy scorers, PPO and evaluation use :class:`reward_models.scoring.RewardScorer`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch

from rlhf.records import DIMENSIONS

HEADS = DIMENSIONS  # one head per HHH dimension of the preference records, in the same order


@dataclass
class RewardScores:
    composite: torch.Tensor  # (batch,) the reward PPO optimises: weighted standardised heads - toxicity term
    heads: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (batch,) raw head scores
    toxicity: torch.Tensor | None = None  # (batch,) Detoxify probability in [0, 1]; None when unavailable

    def as_metrics(self, prefix: str = "reward") -> dict[str, float]:
        """Batch means under namespaced keys: reward/composite, reward/helpful, ..., toxicity."""
        metrics = {f"{prefix}/composite": self.composite.float().mean().item()}
        metrics.update({f"{prefix}/{name}": scores.float().mean().item() for name, scores in self.heads.items()})
        if self.toxicity is not None:
            metrics["toxicity"] = self.toxicity.float().mean().item()
        return metrics


class Scorer(Protocol):
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardScores:
        """Score each (prompt, response); prompts are plain text or HH transcripts."""
        ...
