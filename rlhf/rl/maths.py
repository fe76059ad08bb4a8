"""The maths of PPO for language models, as pure functions on tensors.

Shapes: ``B`` sequences in a batch, ``R`` response positions (one per generated token), ``V`` vocabulary.
Every function takes a ``mask`` of shape (B, R) with 1 on real response tokens and 0 on padding after
the end of a response, so padded positions never enter a mean, a variance or an advantage.
"""
from __future__ import annotations

import torch

# Log-probs, entropy and the KL estimators are evaluation's too: they live in rlhf.models.logprobs (re-exported here for
# the RL trainer and losses, which read them beside the maths below).
from rlhf.models.logprobs import KLEstimator, entropy_from_logits, kl_per_token, logprobs_from_logits  # noqa: F401


# ---------------------------------------------------------------- masked statistics


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is 1 (over everything, or along ``dim``); 0 where the mask is empty."""
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries of ``x`` (Bessel-corrected by default, like ``torch.var``)."""
    mean = masked_mean(x, mask)
    count = mask.sum()
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased and count > 1:
        var = var * count / (count - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  mean: torch.Tensor | None = None, var: torch.Tensor | None = None,
                  eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / std`` over the masked entries; masked-out entries become 0.

    ``mean``/``var`` may be passed in when they were computed over more data than ``x`` (e.g. all
    processes); ``shift_mean=False`` only rescales (keeps the sign of values such as rewards).
    """
    mean = masked_mean(x, mask) if mean is None else mean
    var = masked_var(x, mask) if var is None else var
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# ---------------------------------------------------------------- advantages


def gae(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens; returns (advantages, returns), each (B, R).

    The value after a response's last token is 0 (the episode ends there). Computed as one matrix
    product with the discount matrix W[t', t] = (gamma * lam) ** (t' - t) for t' >= t, so no Python
    loop over time runs.
    """
    values = values * mask
    rewards = rewards * mask
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)  # (B, R)
    deltas = (rewards + gamma * next_values - values) * mask  # (B, R) TD errors
    steps = torch.arange(values.shape[1], device=values.device)
    lags = (steps.unsqueeze(1) - steps.unsqueeze(0)).to(deltas.dtype)  # (R, R): t' - t
    discount = torch.where(lags >= 0, (gamma * lam) ** lags.clamp(min=0), torch.zeros_like(lags))
    advantages = (deltas @ discount) * mask  # (B, R)
    returns = advantages + values
    return advantages, returns


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Return-to-go G_t = sum_{t' >= t} gamma^(t' - t) r_t' over each response: rewards (B, R) -> (B, R).

    GAE with lambda = 1 and no values; one matrix product with the discount matrix, as :func:`gae`."""
    zeros = torch.zeros_like(rewards)
    returns, _ = gae(zeros, rewards, mask, gamma, 1.0)
    return returns


def group_normalize(scores: torch.Tensor, k: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantage: each score minus the mean of its group of ``k`` consecutive rows, divided by the
    group's (unbiased) std when ``scale``. scores (B,) with B a multiple of k -> (B,)."""
    groups = scores.reshape(-1, k)  # (B / k, k)
    centred = groups - groups.mean(1, keepdim=True)
    if scale:
        centred = centred / (groups.std(1, keepdim=True) + eps)
    return centred.reshape(-1)


def zero_variance_groups(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B,) bool: the rows of groups (``k`` consecutive rows) whose scores are all equal. A group estimator gives
    them zero advantage, so they carry no signal (DAPO's dynamic sampling drops them)."""
    groups = scores.reshape(-1, k)  # (B / k, k)
    flat = groups.amax(1) == groups.amin(1)  # (B / k,)
    return flat.repeat_interleave(k)


def leave_one_out(scores: torch.Tensor, k: int) -> torch.Tensor:
    """RLOO's advantage: each score minus the mean of the other k - 1 scores of its group. (B,) -> (B,)."""
    groups = scores.reshape(-1, k)  # (B / k, k)
    others = (groups.sum(1, keepdim=True) - groups) / (k - 1)
    return (groups - others).reshape(-1)


# ---------------------------------------------------------------- losses


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean", max_len: int = 0) -> torch.Tensor:
    """A per-token loss (B, R) as one number.

    token_mean: every real token of the batch weighs the same (long responses weigh more);
    sequence_mean: each response's token mean, then the mean over responses (GRPO's original: a token of a
    short response weighs more); constant: the sum over tokens divided by B x ``max_len`` (Dr. GRPO: no
    length-dependent weight at all)."""
    if mode == "token_mean":
        return masked_mean(per_token, mask)
    if mode == "sequence_mean":
        return masked_mean(per_token, mask, dim=1).mean()
    if mode == "constant":
        if max_len <= 0:
            raise ValueError("constant aggregation needs max_len > 0 (the generation budget)")
        return masked_sum(per_token, mask) / (per_token.shape[0] * max_len)
    raise ValueError(f"unknown loss aggregation {mode!r} (token_mean, sequence_mean or constant)")


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_range: float, aggregation: str = "token_mean",
                        max_len: int = 0, clip_range_high: float | None = None,
                        sequence_level: bool = False) -> dict[str, torch.Tensor]:
    """PPO's clipped surrogate (to minimise) with its diagnostics; every value is a scalar.

    loss = mean(max(-A * r, -A * clip(r, 1 - eps_low, 1 + eps_high))), r = exp(logp - old_logp), averaged as
    ``aggregation`` says (:func:`aggregate`); the diagnostics are token means. eps_low = ``clip_range``,
    eps_high = ``clip_range_high`` (default: the same; DAPO's clip-higher sets it above eps_low).
    ``sequence_level`` (GSPO, Zheng et al. 2025): every token of a response gets the response's ratio
    s = exp(mean_t(logp - old_logp)), the length-normalised sequence likelihood ratio, clipped as a whole.
    ``clipfrac``: share of tokens where the clipped term is the active one. ``approxkl``: k3 estimate
    of KL(old || new) = mean((r - 1) - log r) over tokens, the quantity the early stop watches.
    """
    log_ratio = logprobs - old_logprobs  # (B, R)
    if sequence_level:
        importance = masked_mean(log_ratio, mask, dim=1).unsqueeze(1).expand_as(log_ratio)  # (B, R), constant per row
    else:
        importance = log_ratio
    ratio = torch.exp(importance)
    high = clip_range if clip_range_high is None else clip_range_high
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + high)
    return {
        "loss": aggregate(torch.maximum(unclipped, clipped), mask, aggregation, max_len),
        "clipfrac": masked_mean((clipped > unclipped).float(), mask),
        "approxkl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
        "ratio": masked_mean(ratio, mask),
    }


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, clip_range: float) -> dict[str, torch.Tensor]:
    """0.5 * mean(max((v - R)^2, (v_clipped - R)^2)) with v_clipped = old_v + clip(v - old_v, -eps, eps)."""
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped - returns) ** 2
    return {
        "loss": 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask),
        "clipfrac": masked_mean((clipped_error > unclipped_error).float(), mask),
    }
