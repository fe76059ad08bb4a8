"""Reward objectives: how the scorer's heads (and reward functions) become the sequence score RL maximises.

``reward.objective``:
  weighted    score = sum_h w_h z_h - toxicity_weight * toxicity (the scorer's own composite, unchanged)
  lagrangian  Safe RLHF's PPO-Lagrangian (Dai et al. 2024): the heads named in ``reward.constraints`` are
              constraints E[z_c] >= tau_c, the other heads the objective:
                score = (sum_{h objective} w_h z_h - toxicity term + sum_c lambda_c z_c) / (1 + sum_c lambda_c)
              and after each step lambda_c <- clip(lambda_c + lr * (tau_c - mean z_c), 0, lambda_max)
              (:func:`lagrange_update`): a violated constraint weighs more, a satisfied one relaxes to 0.
``reward.aggregation``:
  sum                the weighted sum above, then the usual shaping and the estimator's baseline
  normalize_then_sum GDPO (TRL's multi_objective_aggregation): each head's baseline-corrected score
                     standardised on its own, then the weighted sum standardised (:func:`normalize_then_sum`),
                     so one head's scale cannot drown the others

z_h is a head on a common scale: a trained HHH model's heads standardised by the mean/std saved in its
reward_config.json (``reward_models.scoring.normalise_heads``), an ensemble's heads as it returns them (already
standardised), reward functions' and the toy's as they come.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from reward_models.types import RewardScores
from rlhf.core.config import ConfigError


def lagrange_update(lambdas: Mapping[str, float], violations: Mapping[str, float], lr: float,
                    lambda_max: float) -> dict[str, float]:
    """One projected gradient-ascent step of the multipliers: lambda + lr * violation, clamped to [0, lambda_max].

    ``violations[c]`` = tau_c - mean z_c: positive while constraint c is violated."""
    return {c: min(max(value + lr * violations[c], 0.0), lambda_max) for c, value in lambdas.items()}


def standardise(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """(x - mean) / (std + eps) over the batch (unbiased std; 0 for a one-row batch)."""
    std = x.std() if x.numel() > 1 else torch.zeros((), dtype=x.dtype)
    return (x - x.mean()) / (std + eps)


def normalize_then_sum(columns: torch.Tensor, weights: torch.Tensor,
                       baseline: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """GDPO: columns (B, H) of per-head scores, weights (H,) -> (B,) advantage-scale sequence scores.

    Each head: the estimator's baseline (``baseline``: GRPO's group normalisation, RLOO's leave-one-out, none
    for PPO / REINFORCE++), then standardised over the batch; the weighted sum is standardised once more."""
    normalised = torch.stack([standardise(baseline(columns[:, h])) for h in range(columns.shape[1])], dim=1)
    return standardise(normalised @ weights)


@dataclass
class HeadTerms:
    """How a scorer's heads enter the objective: weight, and the mean/std that put each on a common scale."""

    weights: dict[str, float] = field(default_factory=dict)  # missing head: 1.0
    mean: dict[str, float] = field(default_factory=dict)  # missing head: 0 (already standardised)
    std: dict[str, float] = field(default_factory=dict)  # missing head: 1
    toxicity_weight: float = 0.0


def head_terms(scorer) -> HeadTerms:
    """The scorer's head weights and standardisation: its own ``head_terms`` (reward functions, a plain
    classifier), a trained HHH model's reward_config.json, an ensemble's first member's weights (its heads are
    standardised already), or weight 1 on raw heads (the toy)."""
    own = getattr(scorer, "head_terms", None)
    if own is not None:
        return own() if callable(own) else own
    config = getattr(scorer, "config", None)
    if config is not None and hasattr(config, "mean"):
        return HeadTerms(dict(config.weights), dict(config.mean), dict(config.std), config.toxicity.weight)
    members = getattr(scorer, "members", None)
    if members:
        return HeadTerms(dict(members[0].config.weights), toxicity_weight=getattr(scorer, "toxicity_weight", 0.0))
    return HeadTerms()


class RewardObjective:
    """The ``reward`` section's objective over one scorer: sequence scores, head columns, the multipliers."""

    def __init__(self, reward, scorer, heads: list[str] | None = None):
        self.terms = head_terms(scorer)
        self.lagrangian = reward.objective == "lagrangian"
        self.aggregation = reward.aggregation
        self.thresholds = dict(reward.constraints) if self.lagrangian else {}
        self.lr, self.lambda_max = reward.lambda_lr, reward.lambda_max
        self.lambdas = {c: reward.lambda_init for c in self.thresholds}
        heads = heads if heads is not None else getattr(scorer, "heads", None)
        if heads is not None:
            check_constraints(reward, list(heads))

    def standardised(self, scores: RewardScores) -> dict[str, torch.Tensor]:
        """name -> (B,) float32 head on the common scale (z_h)."""
        t = self.terms
        return {name: (s.float() - t.mean.get(name, 0.0)) / t.std.get(name, 1.0) for name, s in scores.heads.items()}

    def columns(self, scores: RewardScores) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """(names, (B, H) columns, (H,) weights) whose weighted sum is the sequence score: the heads, and the
        toxicity term when the scorer has one; under lagrangian the constraints weigh lambda_c, all / (1 + sum)."""
        z = self.standardised(scores)
        names = list(z)
        weights = [self.lambdas[n] if n in self.lambdas else self.terms.weights.get(n, 1.0) for n in names]
        if scores.toxicity is not None and scores.toxicity.numel() and self.terms.toxicity_weight:
            names.append("toxicity")
            z["toxicity"] = scores.toxicity.float()
            weights.append(-self.terms.toxicity_weight)
        scale = 1.0 + sum(self.lambdas.values())
        return names, torch.stack([z[n] for n in names], dim=1), torch.tensor(weights) / scale

    def composite(self, scores: RewardScores) -> torch.Tensor:
        """(B,) the sequence score before shaping; the scorer's own composite under weighted (unchanged)."""
        if not self.lagrangian:
            return scores.composite.float()
        _, columns, weights = self.columns(scores)
        return columns @ weights

    def violations(self, scores: RewardScores) -> dict[str, float]:
        """This batch's tau_c - mean z_c per constraint (the trainer averages them over processes)."""
        z = self.standardised(scores)
        return {c: tau - z[c].mean().item() for c, tau in self.thresholds.items()}

    def update(self, violations: Mapping[str, float]) -> None:
        self.lambdas = lagrange_update(self.lambdas, violations, self.lr, self.lambda_max)

    def metrics(self) -> dict[str, float]:
        return {f"lagrangian/lambda_{c}": value for c, value in self.lambdas.items()}

    def state_dict(self) -> dict[str, float]:
        return dict(self.lambdas)

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.lambdas.update({c: float(v) for c, v in state.items() if c in self.lambdas})


def check_constraints(reward, heads: list[str]) -> None:
    """One line naming the key: a constraint on a head the scorer does not have."""
    unknown = sorted(set(reward.constraints) - set(heads))
    if unknown:
        raise ConfigError(f"reward.constraints: no head {unknown[0]!r} (the reward has {', '.join(heads)})")
