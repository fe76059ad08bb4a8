"""Token log-probabilities and entropies from logits, and a response's log-probs under a model: the one
implementation that sampling (``rlhf.sampling``), evaluation (``rlhf.evaluate``, ``rlhf.likelihood``) and RL
(``rlhf.ppo``) share.

Shapes: ``B`` sequences in a batch, ``R`` response positions (one per generated token), ``V`` vocabulary.
"""
from __future__ import annotations

import torch

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


def response_logprobs(model, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """(batch, response_len) fp32 log-probs of the response tokens ``sequences[:, prompt_len:]``.

    Position ids follow the attention mask, as in generation, so left padding does not shift positions.
    """
    response_len = sequences.shape[1] - prompt_len
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (batch, prompt_len + response_len)
    logits = model(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids,
                   logits_to_keep=response_len + 1).logits[:, :-1]  # (batch, response_len, vocab)
    return logprobs_from_logits(logits, sequences[:, prompt_len:])  # fp32, by row chunks
