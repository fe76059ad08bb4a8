"""Measuring a reward model on preference pairs: accuracy per head, and normalisation statistics."""
from __future__ import annotations

from typing import Sequence

import torch

from reward_models.data import head_mask
from reward_models.encoding import PairEncoder
from reward_models.losses import pairwise_correct
from reward_models.model import score_sequences
from reward_models.types import HEADS
from rlhf.data.records import PreferenceRecord


def score_pairs(model, encoder: PairEncoder, pairs: Sequence[PreferenceRecord], batch_size: int = 64,
                bf16: bool = False, inputs=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) scores, each (pairs, heads); ``inputs`` as in :func:`score_sequences`."""
    prompts = [p.prompt for p in pairs]
    sequences = encoder.encode(prompts, [p.chosen for p in pairs]) + encoder.encode(prompts, [p.rejected for p in pairs])
    scores = score_sequences(model, sequences, encoder.pad_token_id, batch_size, bf16, inputs)  # (2 * pairs, heads)
    return scores[:len(pairs)], scores[len(pairs):]


def pair_accuracy(model, encoder: PairEncoder, pairs: Sequence[PreferenceRecord], batch_size: int = 64,
                  bf16: bool = False, inputs=None) -> tuple[dict[str, float], dict[str, int]]:
    """Accuracy of each head on the pairs labelled for it, and how many there were (heads with none are left out)."""
    if not pairs:
        return {}, {}
    chosen, rejected = score_pairs(model, encoder, pairs, batch_size, bf16, inputs)
    correct, counts = pairwise_correct(chosen, rejected, head_mask(pairs))
    accuracy = {h: correct[i].item() / counts[i].item() for i, h in enumerate(HEADS) if counts[i] > 0}
    return accuracy, {h: int(counts[i]) for i, h in enumerate(HEADS) if counts[i] > 0}


def normalisation_stats(model, encoder: PairEncoder, pairs: Sequence[PreferenceRecord], batch_size: int = 64,
                        bf16: bool = False, inputs=None) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and std of every head's score over all responses (chosen and rejected) of ``pairs``.

    Every head is measured on every response, whatever the pair is labelled for: the composite adds
    each head's standardised score on whatever PPO generates.
    """
    chosen, rejected = score_pairs(model, encoder, pairs, batch_size, bf16, inputs)
    scores = torch.cat([chosen, rejected])  # (2 * pairs, heads)
    std = scores.std(0) if len(scores) > 1 else torch.ones(len(HEADS))
    mean = scores.mean(0)
    return ({h: mean[i].item() for i, h in enumerate(HEADS)},
            {h: max(std[i].item(), 1e-6) for i, h in enumerate(HEADS)})
