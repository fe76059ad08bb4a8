"""Length control for RL (issue 23): take the reward's linear trend on response length out of each batch.

A reward model that prefers short (or long) answers hands the policy an easy way up: change the length. With
``reward.length_detrend`` the trainer replaces each score by its residual from the batch's least-squares line
on response length, plus the batch mean:

    score' = score - slope * (length - mean(length)),   slope = cov(length, score) / var(length)

so over the batch the scores are uncorrelated with length and keep their mean; what is left to climb is what
the reward says beyond length. The slope is logged (``reward/length_slope``, reward per token) so a run shows how
strong the trend was. Under several processes the line is fitted on every process's rollouts together.
"""
from __future__ import annotations

from typing import Callable

import torch


def length_slope(scores: torch.Tensor, lengths: torch.Tensor) -> tuple[float, float]:
    """(slope, mean length) of the least-squares line of (B,) scores on (B,) lengths; slope 0 if lengths are equal."""
    x, y = lengths.double(), scores.double()
    dx = x - x.mean()
    var = dx.pow(2).sum().item()
    slope = (dx * (y - y.mean())).sum().item() / var if var > 0 else 0.0
    return slope, x.mean().item()


def remove_length_trend(scores: torch.Tensor, lengths: torch.Tensor,
                        gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> tuple[torch.Tensor, float]:
    """((B,) scores minus their length trend, slope): the line is fitted on ``gather``-ed tensors (all processes).

    Args: scores (B,) rewards of this process's rollouts; lengths (B,) their response lengths in tokens.
    """
    slope, mean_length = length_slope(gather(scores), gather(lengths.to(scores.dtype)))
    detrended = scores - (slope * (lengths.double() - mean_length)).to(scores.dtype)
    return detrended, slope
