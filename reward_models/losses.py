"""Pairwise (Bradley–Terry) loss and accuracy for several reward heads, masked per pair.

A pair speaks only for the dimensions it is labelled with (a TruthfulQA pair says nothing about
harmlessness), so each head's loss and accuracy count only the pairs that label it. Masking is done
with ``torch.where`` rather than a multiplication so an unlabelled head gets an exact zero gradient
even if its (ignored) loss were infinite.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor, mask: torch.Tensor,
                  margin: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked Bradley–Terry loss ``-log sigmoid(r_chosen - r_rejected - margin)``.

    Args:
        chosen, rejected: (batch, heads) head scores of the chosen and rejected responses.
        mask: (batch, heads) bool, True where the pair is labelled for that head.
        margin: (batch,) how much the chosen response must win by (0 = plain Bradley–Terry), or None.

    Returns:
        loss: scalar, the mean over all labelled (pair, head) entries (0 with grad if none).
        per_head: (heads,) mean loss of each head over its labelled pairs; NaN for a head with none.
        counts: (heads,) number of labelled pairs per head.
    """
    diff = chosen - rejected  # (batch, heads)
    if margin is not None:
        diff = diff - margin.to(diff.dtype).unsqueeze(-1)
    nll = torch.where(mask, -F.logsigmoid(diff), torch.zeros_like(diff))  # (batch, heads)
    counts = mask.sum(0)  # (heads,)
    per_head = nll.sum(0) / counts.clamp(min=1)
    per_head = torch.where(counts > 0, per_head, torch.full_like(per_head, float("nan")))
    loss = nll.sum() / counts.sum().clamp(min=1)
    return loss, per_head.detach(), counts


def pairwise_correct(chosen: torch.Tensor, rejected: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head (correct, counted) over labelled pairs; a tie (equal scores) counts as half right.

    Args: chosen, rejected (batch, heads) scores; mask (batch, heads) bool.
    Returns: correct (heads,) float, counts (heads,) long.
    """
    wins = pairwise_wins(chosen, rejected)  # (batch, heads)
    correct = torch.where(mask, wins, torch.zeros_like(wins)).sum(0)
    return correct, mask.sum(0)


def pairwise_wins(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Elementwise 1 where chosen > rejected, 0.5 on a tie, 0 else (float): the accuracy of one pair."""
    return (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
