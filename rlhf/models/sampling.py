"""Sampling backends: how a stage turns prompt token ids into sampled responses.

Every stage that samples (RL rollouts, evaluation, SFT sample tables, ``rlhf annotate make-tasks``) goes
through a :class:`Sampler`. :class:`PlainSampler` is ``model.generate`` and nothing else; RL's fast CPU
sampler (``rlhf.rl.sampler.FastSampler``) adds speed machinery behind the same interface and is tested
against this one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class SamplingPass:
    """What one sampling call produced. B rows, P prompt + R generated positions."""

    sequences: torch.Tensor  # (B, P + R) prompt and sampled tokens
    prompt_len: int  # P
    logits: torch.Tensor | None = None  # (B, R, V) float32 logits each token was drawn from (before temperature); None: not kept
    hidden: torch.Tensor | None = None  # (B, R, H) float32 last hidden state before each token (value head's input); None: not kept
    trunk: torch.Tensor | None = None  # (B, P + R, H) output of a frozen trunk at every position; None: no trunk
    logprobs: torch.Tensor | None = None  # (B, R) float32 log-prob of each sampled token at the sampling temperature; None: not kept

    @property
    def response_ids(self) -> torch.Tensor:
        """(B, R) the generated tokens (after EOS: padding, which for SmolLM2 is EOS again)."""
        return self.sequences[:, self.prompt_len:]


class Sampler(Protocol):
    """``sample(input_ids (B, P), attention_mask (B, P), **generate_kwargs) -> SamplingPass``; left-padded prompts.

    ``keep_logits``: also return the logits each token was drawn from; ``keep_logprobs``: only the sampled
    tokens' log-probs (for log-probs and KL without a second forward, without holding (B, R, V) logits)."""

    def sample(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep_logits: bool = False,
               keep_logprobs: bool = False, **generate_kwargs) -> SamplingPass: ...


class PlainSampler:
    """``model.generate`` as it is (KV cache, stop at EOS): any causal LM or PEFT model."""

    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def sample(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep_logits: bool = False,
               keep_logprobs: bool = False, **generate_kwargs) -> SamplingPass:
        if not (keep_logits or keep_logprobs):
            sequences = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
            return SamplingPass(sequences, input_ids.shape[1])
        out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, return_dict_in_generate=True,
                                  output_logits=True, **generate_kwargs)
        logits = torch.stack(out.logits, dim=1).float() if out.logits else None  # (B, R, V)
        logprobs = None
        if keep_logprobs and logits is not None:
            from rlhf.models.logprobs import logprobs_from_logits

            logprobs = logprobs_from_logits(logits, out.sequences[:, input_ids.shape[1]:],
                                            generate_kwargs.get("temperature") or 1.0)  # (B, R)
        return SamplingPass(out.sequences, input_ids.shape[1], logits if keep_logits else None, logprobs=logprobs)
