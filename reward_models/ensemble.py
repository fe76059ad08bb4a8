"""An ensemble of reward models (k seeds or k backbones) scored together: the mean and the spread.

>>> ensemble = RewardEnsemble.from_pretrained(["runs/rm-seed0", "runs/rm-seed1", "runs/rm-seed2"])
>>> scores = ensemble.score(prompts, responses)
>>> scores.composite, scores.spread, scores.heads["harmless"], scores.head_spread["harmless"]

Members may differ in backbone, so their raw head scores are on different scales: every member's heads
are first standardised with its own saved mean/std (the same standardisation its composite uses), and
the ensemble reports, per head and for the composite, the mean and the spread (standard deviation
across members) of those. With ``spread_penalty`` λ > 0, ``composite`` is the conservative reward
``mean - λ * spread`` (Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization"): a
response the members disagree on is worth less, which guards PPO against exploiting one model's errors.
Detoxify, when configured, runs once and enters every member's composite the same way.

``aggregate`` picks how the members' standardised heads become one score per head (Coste et al., ICLR 2024):
``mean`` (the composite is the mean of the members' composites, minus ``spread_penalty`` · spread),
``wco`` (worst case: the minimum over members) or ``uwo`` (uncertainty-weighted: mean − λ · variance across
members); with wco and uwo the composite is the members' shared head weights times the aggregated heads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping, Sequence

import torch

from reward_models.config import ToxicitySettings
from reward_models.model import ScoringConfig
from reward_models.scoring import RewardScorer, composite_reward, normalise_heads, resolve_model_folder
from reward_models.toxicity import ToxicityScorer, load_toxicity
from reward_models.types import RewardScores
from rlhf.core.runtime import Precision, select_device


def mean_and_spread(stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(members, batch) -> ((batch,) mean, (batch,) population std across members).

    Computed as offsets from the first member, so identical members give a spread of exactly 0 and a
    mean equal to that member's score to the last bit (a plain mean of three equal floats need not be).
    The population std (divide by k, not k - 1) makes a one-member "ensemble" a spread of 0, not NaN.
    """
    first = stacked[0]  # (batch,)
    offsets = stacked - first  # (members, batch)
    return first + offsets.mean(0), (offsets - offsets.mean(0)).pow(2).mean(0).sqrt()


def worst_case(stacked: torch.Tensor) -> torch.Tensor:
    """WCO: (members, batch) -> (batch,) the lowest member score."""
    return stacked.min(0).values


def uncertainty_weighted(stacked: torch.Tensor, uwo_lambda: float) -> torch.Tensor:
    """UWO: (members, batch) -> (batch,) mean − λ · population variance across members."""
    mean, spread = mean_and_spread(stacked)
    return mean - uwo_lambda * spread.pow(2) if uwo_lambda else mean


def aggregate_members(stacked: torch.Tensor, aggregate: str, uwo_lambda: float = 0.0) -> torch.Tensor:
    """(members, batch) -> (batch,) by ``aggregate``: mean, wco (min) or uwo (mean − λ·var)."""
    if aggregate == "wco":
        return worst_case(stacked)
    if aggregate == "uwo":
        return uncertainty_weighted(stacked, uwo_lambda)
    if aggregate == "mean":
        return mean_and_spread(stacked)[0]
    raise ValueError(f"aggregate: expected one of {list(AGGREGATES)}, got {aggregate!r}")


AGGREGATES = ("mean", "uwo", "wco")


def conservative_reward(mean: torch.Tensor, spread: torch.Tensor, spread_penalty: float) -> torch.Tensor:
    """(batch,) ``mean - spread_penalty * spread``: the reward PPO optimises with an ensemble."""
    return mean - spread_penalty * spread if spread_penalty else mean


class RewardEnsemble:
    """k saved reward models behind the ``Scorer`` protocol; ``score`` returns the members' mean and spread."""

    def __init__(self, members: Sequence[RewardScorer], toxicity: ToxicityScorer | None = None,
                 spread_penalty: float = 0.0, aggregate: str = "mean", uwo_lambda: float = 0.0):
        if not members:
            raise ValueError("an ensemble needs at least one reward model")
        heads = members[0].heads
        for i, member in enumerate(members[1:], start=1):
            if member.heads != heads:
                raise ValueError(f"ensemble member {i} has heads {member.heads}, member 0 has {heads}")
        if spread_penalty < 0:
            raise ValueError(f"spread_penalty must be >= 0, got {spread_penalty}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate: expected one of {list(AGGREGATES)}, got {aggregate!r}")
        if uwo_lambda < 0:
            raise ValueError(f"uwo_lambda must be >= 0, got {uwo_lambda}")
        if aggregate != "mean":  # one head weighting for the aggregated heads: the members must share it
            for i, member in enumerate(members[1:], start=1):
                if dict(member.config.weights) != dict(members[0].config.weights):
                    raise ValueError(f"ensemble member {i} weights its heads {member.config.weights}, member 0 "
                                     f"{members[0].config.weights}; aggregate {aggregate} needs the same weights")
        self.members, self.toxicity, self.spread_penalty = list(members), toxicity, spread_penalty
        self.aggregate, self.uwo_lambda = aggregate, uwo_lambda
        # one Detoxify for all: the members' composites subtract the same term
        self.toxicity_weight = toxicity.settings.weight if toxicity is not None else 0.0

    @classmethod
    def from_pretrained(cls, paths: Sequence[str | Path], device: str | torch.device | None = None,
                        toxicity: ToxicitySettings | ToxicityScorer | Literal["config"] | None = "config",
                        precision: Precision = "auto", batch_size: int = 32,
                        weights: Mapping[str, float] | None = None, spread_penalty: float = 0.0,
                        aggregate: str = "mean", uwo_lambda: float = 0.0) -> "RewardEnsemble":
        """Load every member (model folders or reward run folders), as :meth:`RewardScorer.from_pretrained` does.

        toxicity: ``"config"`` = the Detoxify settings saved with the FIRST member; else as RewardScorer.
        """
        if not paths:
            raise ValueError("an ensemble needs at least one reward model folder")
        device = select_device() if device is None else torch.device(device)  # None: rlhf.core.runtime decides
        members = [RewardScorer.from_pretrained(p, device, toxicity=None, precision=precision, batch_size=batch_size,
                                                weights=weights) for p in paths]
        if isinstance(toxicity, ToxicityScorer):
            toxicity_scorer = toxicity
        else:
            settings = (ScoringConfig.load(resolve_model_folder(paths[0])).toxicity if toxicity == "config"
                        else toxicity or ToxicitySettings())
            toxicity_scorer = load_toxicity(settings, device)
        return cls(members, toxicity_scorer, spread_penalty, aggregate, uwo_lambda)

    @property
    def heads(self) -> list[str]:
        return self.members[0].heads

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardScores:
        """heads: aggregated standardised score per head; composite: mean (minus penalty·spread) of the members'
        composites, or (wco, uwo) the weighted aggregated heads minus toxicity; spread, head_spread."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        toxicity = self.toxicity.score(responses) if self.toxicity is not None and prompts else None  # (batch,)
        composites, standardised = [], []
        for member in self.members:
            raw = member.score_heads(prompts, responses) if prompts else {h: torch.zeros(0) for h in self.heads}
            cfg = member.config
            composites.append(composite_reward(raw, cfg.weights, cfg.mean, cfg.std, toxicity, self.toxicity_weight))
            standardised.append(normalise_heads(raw, cfg.mean, cfg.std))
        mean, spread = mean_and_spread(torch.stack(composites))  # (batch,) each
        heads, head_spread = {}, {}
        for name in self.heads:
            stacked = torch.stack([s[name] for s in standardised])  # (members, batch)
            heads[name] = aggregate_members(stacked, self.aggregate, self.uwo_lambda)
            head_spread[name] = mean_and_spread(stacked)[1]
        if self.aggregate == "mean":
            composite = conservative_reward(mean, spread, self.spread_penalty)
        else:  # the heads are already standardised: unit mean/std, the first member's weights
            weights = self.members[0].config.weights
            composite = composite_reward(heads, weights, {h: 0.0 for h in heads}, {h: 1.0 for h in heads}, toxicity,
                                         self.toxicity_weight)
        if toxicity is None and self.toxicity is not None:
            toxicity = torch.zeros(0)
        return RewardScores(composite=composite, heads=heads, toxicity=toxicity, spread=spread,
                            head_spread=head_spread)
