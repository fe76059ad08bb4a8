"""Response log-probs, EOS masks and KL: the one module evaluation and RL share.

Shapes: ``B`` sequences, ``P`` prompt positions (left-padded), ``R`` response positions, ``V`` vocabulary.

* :func:`response_mask`: which generated tokens belong to a response (up to and including the first EOS);
* :func:`response_position_ids`: positions that skip left padding, as ``generate`` numbers them;
* :func:`logprobs_from_logits` / :func:`entropy_from_logits`: per token, in float32, by row chunks (memory);
* :func:`response_logprobs`: a causal LM's log-probs of the response tokens of whole sequences (evaluation's
  reference, the judge-free metrics); RL's ``PolicyModel`` runs its own forward (response positions only, a
  frozen trunk) and feeds the same :func:`logprobs_from_logits`;
* :func:`kl_per_token` (RL's penalty and diagnostics) and :func:`sequence_kl` (evaluation's per-sequence KL):
  Schulman's k1 and k3 estimators, written once (:func:`kl_from_log_ratio`).
"""
from __future__ import annotations

from typing import Literal

import torch

KLEstimator = Literal["k1", "k3"]


# ---------------------------------------------------------------- which tokens are the response


def response_mask(response_ids: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, R) generated tokens -> ((B, R) float mask, 1 up to and including the first EOS, (B,) has_eos).

    Built from the EOS position, never from ``ids == pad``: SmolLM2's pad token *is* its EOS, and the EOS itself
    is a real token of the response."""
    is_eos = response_ids == eos_token_id
    has_eos = is_eos.any(1)
    first_eos = torch.where(has_eos, is_eos.int().argmax(1), torch.full_like(has_eos, response_ids.shape[1], dtype=torch.long))
    lengths = torch.where(has_eos, first_eos + 1, first_eos)  # (B,) response lengths, EOS included
    positions = torch.arange(response_ids.shape[1], device=response_ids.device)
    return (positions.unsqueeze(0) < lengths.unsqueeze(1)).float(), has_eos


def response_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, exactly as ``generate`` numbers them: (B, T)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# ---------------------------------------------------------------- log-probs and entropy


# Rows of the (B, R, V) logits reduced at once when no gradient is needed: the float32 copy and the two or
# three (rows, V) temporaries of a reduction then exist for one chunk, not for all B x R rows (over a 49k
# vocabulary, 8 x 32 rows are ~50 MB per float32 copy). 4M elements = 16 MB of float32.
NO_GRAD_CHUNK_ELEMENTS = 1 << 22


def _by_row_chunks(fn, logits: torch.Tensor, *per_row: torch.Tensor) -> torch.Tensor:
    """``fn(logits, *per_row)`` -> (...,), computed over chunks of rows when autograd does not need the
    graph; each row's result depends on that row only, so the chunks give what one call gives."""
    if logits.requires_grad and torch.is_grad_enabled():
        return fn(logits, *per_row)
    vocab = logits.shape[-1]
    flat, rest = logits.reshape(-1, vocab), [x.reshape(-1) for x in per_row]  # (N, V), (N,) each
    step = max(1, NO_GRAD_CHUNK_ELEMENTS // vocab)
    if flat.shape[0] <= step:
        return fn(logits, *per_row)
    out = torch.cat([fn(flat[i:i + step], *(x[i:i + step] for x in rest)) for i in range(0, flat.shape[0], step)])
    return out.reshape(logits.shape[:-1])


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature  # no copy at temperature 1


def _token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = _scaled(logits, temperature)
    # log p(token) = logit(token) - logsumexp(logits): no (B, R, V) log_softmax tensor is kept.
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """Token log-probs whose graph keeps only the logits as they came (bf16 under autocast) and whose
    backward, d/dlogits = (onehot(token) - softmax(logits / T)) * grad / T, runs by row chunks.

    Autograd's own graph keeps the float32 copy for logsumexp's backward and builds the gradient from two
    or three float32 (rows, V) temporaries: ~3x the logits' size at the update's peak, per micro-batch."""

    @staticmethod
    def forward(ctx, logits, tokens, temperature):
        with torch.no_grad():
            out = _by_row_chunks(lambda x, t: _token_logprobs(x, t, temperature), logits, tokens)
        ctx.save_for_backward(logits, tokens)
        ctx.temperature = temperature
        return out

    @staticmethod
    def backward(ctx, grad):
        logits, tokens = ctx.saved_tensors
        vocab = logits.shape[-1]
        flat, flat_tokens, flat_grad = logits.reshape(-1, vocab), tokens.reshape(-1), grad.reshape(-1).float()
        out = torch.empty_like(flat)  # (N, V) in the logits' dtype
        step = max(1, NO_GRAD_CHUNK_ELEMENTS // vocab)
        for i in range(0, flat.shape[0], step):
            rows = slice(i, i + step)
            probs = torch.softmax(_scaled(flat[rows], ctx.temperature), dim=-1)  # (n, V) float32
            chunk = probs.mul_(-flat_grad[rows, None])
            chunk.scatter_add_(1, flat_tokens[rows, None], flat_grad[rows, None])
            out[rows] = chunk.div_(ctx.temperature) if ctx.temperature != 1.0 else chunk
        return out.reshape(logits.shape), None, None


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each chosen token under softmax(logits / temperature): logits (B, R, V), tokens
    (B, R) -> (B, R), in float32 (whatever the logits' dtype). Differentiable in ``logits``; the forward and
    the backward both run by row chunks (memory: see ``_ChunkedTokenLogprobs``)."""
    if logits.requires_grad and torch.is_grad_enabled():
        return _ChunkedTokenLogprobs.apply(logits, tokens, temperature)
    return _by_row_chunks(lambda x, t: _token_logprobs(x, t, temperature), logits, tokens)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of each categorical distribution softmax(logits / temperature): logits (B, R, V) -> (B, R),
    in float32."""

    def fn(logits):
        logits = _scaled(logits, temperature)
        log_z = torch.logsumexp(logits, dim=-1, keepdim=True)
        probs = torch.softmax(logits, dim=-1)
        return (log_z - logits).mul(probs).sum(-1)

    return _by_row_chunks(fn, logits)


@torch.no_grad()
def response_logprobs(model, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """(B, R) float32 log-probs of the response tokens ``sequences[:, prompt_len:]`` under a causal LM.

    Position ids follow the attention mask, as in generation, so left padding does not shift positions; only the
    response positions' logits are computed (``logits_to_keep``)."""
    response_len = sequences.shape[1] - prompt_len
    logits = model(input_ids=sequences, attention_mask=attention_mask, position_ids=response_position_ids(attention_mask),
                   logits_to_keep=response_len + 1).logits[:, :-1]  # (B, R, V)
    return logprobs_from_logits(logits, sequences[:, prompt_len:])


# ---------------------------------------------------------------- KL estimators


def kl_from_log_ratio(log_ratio: torch.Tensor, estimator: KLEstimator) -> torch.Tensor:
    """Schulman's estimators of KL(p || q) from log p/q of tokens sampled from p: k1 = log p/q (unbiased, can be
    negative per token); k3 = (q/p - 1) - log(q/p) (unbiased, never negative, lower variance when p and q are
    close; ``expm1`` keeps it exact for small ratios)."""
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (use k1 or k3)")


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probs: (B, R) -> (B, R)."""
    return kl_from_log_ratio(logprobs - ref_logprobs, estimator)


def sequence_kl(policy_logprobs: torch.Tensor, reference_logprobs: torch.Tensor,
                mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sequence KL(policy || reference) estimates from the policy's own sampled tokens.

    All inputs are (batch, response_len): log-probs of the sampled tokens under each model and a 0/1 mask
    of real response tokens. Returns ``{"k1": (batch,), "k3": (batch,)}`` summed over tokens (in float64, so a
    long response's sum of small terms keeps its digits)."""
    if policy_logprobs.shape != reference_logprobs.shape or policy_logprobs.shape != mask.shape:
        raise ValueError(f"sequence_kl: shapes differ {tuple(policy_logprobs.shape)}, "
                         f"{tuple(reference_logprobs.shape)}, {tuple(mask.shape)}")
    mask = mask.to(policy_logprobs.dtype)
    log_ratio = (policy_logprobs - reference_logprobs).double()  # (batch, response_len) log p/q
    return {e: (kl_from_log_ratio(log_ratio, e) * mask).sum(-1).float() for e in ("k1", "k3")}
