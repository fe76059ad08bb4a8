"""Policy losses: the one place where PPO's clipped surrogate, DAPO's clip-higher and GSPO differ.

Every loss sees the same inputs, one micro-batch from the trainer:

    logprobs      (b, r) the current policy's log-probs of the sampled tokens (with gradient)
    old_logprobs  (b, r) the behaviour policy's (sampling-time) log-probs
    advantages    (b, r) from the algorithm's estimator (rlhf.rl.advantages)
    mask          (b, r) 1 on the response tokens that enter the loss

and returns ``rlhf.rl.maths.clipped_policy_loss``'s dict: ``loss`` (to minimise, averaged as
``rl.loss_aggregation`` says), ``clipfrac``, ``approxkl``, ``ratio``.

| rl.policy_loss | importance ratio | clip interval | reads |
| --- | --- | --- | --- |
| clip (PPO, Schulman et al. 2017) | per token | [1 - eps, 1 + eps] | update.clip_range |
| clip_higher (DAPO, Yu et al. 2025) | per token | [1 - eps_low, 1 + eps_high] | update.clip_range, update.clip_range_high |
| gspo (Zheng et al. 2025) | per response: exp(mean_t log-ratio) | [1 - eps_low, 1 + eps_high] | update.clip_range, update.clip_range_high |

A new loss is a new entry: subclass :class:`PolicyLoss`, override ``__call__`` (or set its flags), add it to
``POLICY_LOSSES``, and to the ``rl.policy_loss`` literal; the trainer calls whichever entry the config names.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.rl.maths import clipped_policy_loss


@dataclass
class PolicyLoss:
    """PPO's clipped surrogate with a symmetric clip interval."""

    clip_low: float = 0.2  # eps_low: the ratio is clipped below at 1 - eps_low
    clip_high: float = 0.2  # eps_high: ... and above at 1 + eps_high
    asymmetric = False  # reads update.clip_range_high for eps_high (else eps_high = eps_low = update.clip_range)
    sequence_level = False  # one importance ratio per response (GSPO) instead of one per token

    def __call__(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                 mask: torch.Tensor, aggregation: str = "token_mean", max_len: int = 0) -> dict[str, torch.Tensor]:
        return clipped_policy_loss(logprobs, old_logprobs, advantages, mask, self.clip_low, aggregation, max_len,
                                   clip_range_high=self.clip_high, sequence_level=self.sequence_level)


@dataclass
class ClipHigher(PolicyLoss):
    """DAPO's clip-higher: a wider upper bound lets low-probability tokens with positive advantage grow, which
    keeps the policy's entropy from collapsing (eps_low 0.2, eps_high 0.28 in the paper)."""

    asymmetric = True


@dataclass
class SequenceRatio(PolicyLoss):
    """GSPO: the importance ratio of a whole response, exp of its length-normalised log-ratio sum, clipped at the
    sequence level (TRL's importance_sampling_level="sequence"). The paper clips at 3e-4 / 4e-4: sequence
    ratios sit much closer to 1 than token ratios."""

    asymmetric = True
    sequence_level = True


POLICY_LOSSES: dict[str, type[PolicyLoss]] = {"clip": PolicyLoss, "clip_higher": ClipHigher, "gspo": SequenceRatio}


def make_policy_loss(name: str, clip_range: float = 0.2, clip_range_high: float = 0.28) -> PolicyLoss:
    """The loss ``name`` (a key of POLICY_LOSSES) with its clip interval."""
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r} (one of {', '.join(POLICY_LOSSES)})")
    cls = POLICY_LOSSES[name]
    return cls(clip_low=clip_range, clip_high=clip_range_high if cls.asymmetric else clip_range)
