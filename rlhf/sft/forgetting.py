"""Catastrophic-forgetting check: TruthfulQA multiple choice (MC1) scored by log-likelihood.

For each held-out question the model scores every candidate answer as an assistant turn: the summed
log-probability of its tokens (end-of-turn token included). The question counts as right when the best
answer scores higher than every incorrect one. Run on the base and the fine-tuned model, the
difference says how much of an untrained skill the fine-tuning cost.
"""
from __future__ import annotations

from typing import Sequence

import torch

from rlhf.core.runtime import autocast as runtime_autocast
from rlhf.sft.data import encode_chat


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of the masked tokens of each row.

    logits (B, T, V) from the model; input_ids (B, T); target_mask (B, T) 1 on the tokens to score.
    Token t is predicted by the logits at t - 1, so the first token can never be scored.
    """
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    token_logprobs = logprobs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return (token_logprobs * target_mask[:, 1:]).sum(dim=-1)  # (B,)


def mc1_accuracy(scores: Sequence[Sequence[float]]) -> float:
    """Share of questions whose first candidate (the best answer) outscores every other (incorrect) one."""
    if not scores:
        raise ValueError("no questions to score")
    return sum(s[0] > max(s[1:]) for s in scores) / len(scores)


@torch.no_grad()
def answer_logprobs(model, tokenizer, chats: Sequence[Sequence[dict[str, str]]], batch_size: int = 8,
                    autocast: bool = False) -> list[float]:
    """Summed log-probability of each chat's assistant turns under ``model``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[float] = []
    for start in range(0, len(chats), batch_size):
        encoded = [encode_chat(tokenizer, chat) for chat in chats[start:start + batch_size]]
        width = max(len(e.input_ids) for e in encoded)
        # Right padding; padded positions are excluded by attention and target masks built from lengths
        # (pad == EOS for SmolLM2, so the ids cannot tell padding from a real end-of-turn token).
        ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)  # (B, T)
        attention = torch.zeros_like(ids)  # (B, T)
        targets = torch.zeros_like(ids)  # (B, T)
        for row, e in enumerate(encoded):
            n = len(e.input_ids)
            ids[row, :n] = torch.tensor(e.input_ids)
            attention[row, :n] = 1
            targets[row, :n] = torch.tensor(e.assistant_masks)
        ids, attention, targets = ids.to(device), attention.to(device), targets.to(device)
        with runtime_autocast(device, autocast):
            logits = model(input_ids=ids, attention_mask=attention).logits  # (B, T, V)
        out.extend(sequence_logprobs(logits, ids, targets).tolist())
    model.train(was_training)
    return out


def truthfulqa_mc1(model, tokenizer, n: int = 0, batch_size: int = 8, autocast: bool = False) -> float:
    """MC1 accuracy on the first ``n`` questions (0 = all) of TruthfulQA's test split."""
    from rlhf.data.sources import truthfulqa_items

    items = [it for it in truthfulqa_items("test") if it.incorrect]
    items = items[:n] if n else items
    chats, sizes = [], []
    for item in items:
        candidates = [item.best_answer, *item.incorrect]
        chats += [[{"role": "user", "content": item.question}, {"role": "assistant", "content": answer}]
                  for answer in candidates]
        sizes.append(len(candidates))
    flat = answer_logprobs(model, tokenizer, chats, batch_size, autocast)
    scores, at = [], 0
    for size in sizes:
        scores.append(flat[at:at + size])
        at += size
    return mc1_accuracy(scores)
