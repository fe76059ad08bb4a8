"""Advantage estimators: the one place where PPO, GRPO, RLOO and REINFORCE++ differ.

Every estimator sees the same inputs, built by the trainer from one batch of experience:

    scores   (B,)   the shaped sequence score of each rollout (reward model, EOS penalty, normalisation)
    penalty  (B, R) the per-token KL penalty -kl_coef * KL_t (zeros when the KL is a loss term instead)
    mask     (B, R) 1 on response tokens
    values   (B, R) the critic's values, or None for the critic-free estimators
    k               samples per prompt; rollouts of one prompt are consecutive rows (groups of k)

and returns ``(advantages, returns)``, each (B, R); ``returns`` only train a value head (GAE). An estimator
may first replace each score by a baseline-corrected one (``sequence_scores``: the group's mean, the others'
mean), then turns scores and penalties into per-token advantages (``token_advantages``). The trainer whitens
the advantages over every process when ``whiten`` is set.

A new estimator is a new entry: subclass :class:`AdvantageEstimator` (override ``sequence_scores`` and/or
``token_advantages``, set its flags), add it to ``ESTIMATORS`` and to the ``rl.algo`` literal
(``rlhf/rl/config.py``); the config checks, the value head, whitening and the trainer read its flags.

| algo | sequence score | token advantage | whiten | value head |
| --- | --- | --- | --- | --- |
| ppo (GAE) | as is | GAE(gamma, lambda) over per-token rewards | yes | yes |
| grpo (Shao et al. 2024) | (s - group mean) / group std | return-to-go of per-token rewards | no | no |
| rloo (Ahmadian et al. 2024) | s - mean of the other k-1 | return-to-go | no | no |
| reinforce_pp (Hu 2025) | as is | return-to-go | yes | no |

Per-token rewards are the KL penalty on every token plus the (corrected) score on the last one
(``rlhf.rl.rewards.place_scores``), so with the KL in the loss (GRPO's default) the return-to-go is the
sequence advantage on every token, as in GRPO's outcome supervision.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from rlhf.rl.maths import discounted_returns, gae, group_normalize, leave_one_out
from rlhf.rl.rewards import place_scores


@dataclass
class AdvantageEstimator:
    """Return-to-go of the per-token rewards: REINFORCE's estimator, and the base of the others."""

    gamma: float = 1.0  # discount over response tokens
    needs_values = False  # the estimator reads a value head (the model gets one only then)
    needs_groups = False  # the estimator compares the k rollouts of a prompt (k >= 2)
    whiten = False  # whiten the advantages over the whole batch (every process)
    kl_in_loss = False  # kl.placement auto puts the KL in the loss (GRPO's), else in the reward as a penalty

    def sequence_scores(self, scores: torch.Tensor, k: int) -> torch.Tensor:  # noqa: ARG002 - k: group estimators
        return scores

    def token_advantages(self, rewards: torch.Tensor, mask: torch.Tensor,
                         values: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ARG002
        returns = discounted_returns(rewards, mask, self.gamma)
        return returns, returns

    def __call__(self, scores: torch.Tensor, penalty: torch.Tensor, mask: torch.Tensor,
                 values: torch.Tensor | None = None, k: int = 1,
                 corrected: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``corrected``: the scores already carry the baseline (reward.aggregation normalize_then_sum)."""
        if self.needs_values and values is None:
            raise ValueError(f"{type(self).__name__} needs the value head's values")
        if not corrected:
            scores = self.sequence_scores(scores, k)
        rewards = place_scores(scores, penalty, mask)  # (B, R)
        return self.token_advantages(rewards, mask, values)


@dataclass
class GAE(AdvantageEstimator):
    """PPO: generalised advantage estimation against a learned value function."""

    lam: float = 0.95
    needs_values = True
    whiten = True

    def token_advantages(self, rewards, mask, values):
        return gae(values, rewards, mask, self.gamma, self.lam)


@dataclass
class GroupNormalized(AdvantageEstimator):
    """GRPO: each score relative to the other samples of its prompt, in units of their spread."""

    scale: bool = True  # divide by the group's std (False: Dr. GRPO, whose std division favours easy prompts)
    needs_groups = True
    kl_in_loss = True

    def sequence_scores(self, scores, k):
        return group_normalize(scores, k, scale=self.scale)


@dataclass
class LeaveOneOut(AdvantageEstimator):
    """RLOO: the baseline of a sample is the mean score of the other k - 1 samples of its prompt."""

    needs_groups = True

    def sequence_scores(self, scores, k):
        return leave_one_out(scores, k)


@dataclass
class ReinforcePlusPlus(AdvantageEstimator):
    """REINFORCE++: token-level KL in the reward, return-to-go whitened over the whole batch (no critic)."""

    whiten = True


ESTIMATORS: dict[str, type[AdvantageEstimator]] = {
    "ppo": GAE, "grpo": GroupNormalized, "rloo": LeaveOneOut, "reinforce_pp": ReinforcePlusPlus,
}


def make_estimator(algo: str, gamma: float = 1.0, lam: float = 0.95, scale_rewards: bool = True) -> AdvantageEstimator:
    """The estimator of ``algo`` (a key of ESTIMATORS) with the settings its dataclass declares (gamma; GAE's lam
    = ppo.lam; GRPO's scale = rl.scale_rewards): a new estimator needs only its entry."""
    if algo not in ESTIMATORS:
        raise ValueError(f"unknown algorithm {algo!r} (one of {', '.join(ESTIMATORS)})")
    cls = ESTIMATORS[algo]
    settings = {"gamma": gamma, "lam": lam, "scale": scale_rewards}
    return cls(**{f.name: settings[f.name] for f in fields(cls) if f.name in settings})
