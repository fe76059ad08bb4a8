"""Pairwise (Bradley–Terry) loss and accuracy for several reward heads, masked per pair.

A pair speaks only for the dimensions it is labelled with (a TruthfulQA pair says nothing about
harmlessness), so each head's loss and accuracy count only the pairs that label it. Masking is done
with ``torch.where`` rather than a multiplication so an unlabelled head gets an exact zero gradient
even if its (ignored) loss were infinite.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor, mask: torch.Tensor,
                  margin: torch.Tensor | None = None, offset: torch.Tensor | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked Bradley–Terry loss ``-log sigmoid(r_chosen - r_rejected - margin + offset)``.

    Args:
        chosen, rejected: (batch, heads) head scores of the chosen and rejected responses.
        mask: (batch, heads) bool, True where the pair is labelled for that head.
        margin: (batch,) how much the chosen response must win by (0 = plain Bradley–Terry), or None.
        offset: (batch, heads) a fixed logit added to each difference (a bias-only model's, e.g. the length
            covariate's β·Δlen: the heads then learn what it does not explain), or None.

    Returns:
        loss: scalar, the mean over all labelled (pair, head) entries (0 with grad if none).
        per_head: (heads,) mean loss of each head over its labelled pairs; NaN for a head with none.
        counts: (heads,) number of labelled pairs per head.
    """
    diff = chosen - rejected  # (batch, heads)
    if margin is not None:
        diff = diff - margin.to(diff.dtype).unsqueeze(-1)
    if offset is not None:
        diff = diff + offset.to(diff.dtype)
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


# ---------------------------------------------------------------- length debiasing (issue 23)
# A preference set in which one side is usually shorter (HH harmless: the refusal) teaches a head to count
# tokens. Two remedies act in the loss: a length covariate fitted first and added to every pair's logit, so
# the head only has to learn what length does not explain (a product of experts with a bias-only model,
# Clark et al. 2019; He et al. 2019), and ODIN's correlation penalty (Chen et al. 2024) on the head itself.


def fit_length_coefficient(length_diff: torch.Tensor, iterations: int = 50) -> float:
    """β maximising ``sum log sigmoid(β * Δlen)`` over pairs: the length-only model of "chosen wins".

    Args: length_diff (pairs,) len(chosen) - len(rejected), in whatever unit the caller adds it in.
    Returns 0 when length says nothing (as many pairs each way, or no unequal pair). Newton's method on a
    concave one-dimensional log-likelihood; when every pair points the same way the maximum is at infinity,
    so β is capped where the length model would already be 99 % sure on the median pair.
    """
    x = length_diff.double()[length_diff != 0]
    if x.numel() == 0:
        return 0.0
    cap = math.log(99) / x.abs().median().item()
    beta = 0.0
    for _ in range(iterations):
        p = torch.sigmoid(beta * x)  # P(chosen wins) under the length model
        grad = ((1 - p) * x).sum().item()
        hess = (p * (1 - p) * x * x).sum().item()
        if hess <= 0:
            break
        step = grad / hess
        beta = max(-cap, min(cap, beta + step))
        if abs(step) < 1e-10:
            break
    return beta


def pearson(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of two (n,) tensors (0 when either is constant); differentiable in both."""
    xc, yc = x - x.mean(), y - y.mean()
    return (xc * yc).sum() / (xc.pow(2).sum().sqrt() * yc.pow(2).sum().sqrt() + eps)


def length_correlation_penalty(scores: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ODIN's decorrelation term: mean over heads of |corr(score_h, length)| over the responses labelled for h.

    Args:
        scores: (responses, heads) head scores (chosen and rejected rows alike).
        lengths: (responses,) response lengths in tokens.
        mask: (responses, heads) bool, True where the response's pair is labelled for that head.
    Returns a scalar; heads with fewer than 3 labelled responses are left out (0 if none is left).
    """
    terms = [pearson(scores[mask[:, h], h], lengths[mask[:, h]].to(scores.dtype)).abs()
             for h in range(scores.shape[1]) if int(mask[:, h].sum()) >= 3]
    return torch.stack(terms).mean() if terms else scores.sum() * 0
