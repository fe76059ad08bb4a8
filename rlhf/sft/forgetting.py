"""Catastrophic-forgetting check: TruthfulQA MC1, scored as the judge-free evaluation scores it.

For each held-out question the model scores the best answer and every incorrect one: the summed log-probability
of the answer's tokens after the question's chat prompt (:func:`rlhf.evaluation.likelihood.sequence_logprobs`,
the one log-prob function of evaluation). The question counts as right when the best answer scores strictly
higher than every incorrect one (:func:`rlhf.evaluation.likelihood.mc1`). Run on the base and the fine-tuned
model, the difference says how much of an untrained skill the fine-tuning cost.
"""
from __future__ import annotations

from rlhf.core.runtime import autocast as runtime_autocast


def truthfulqa_mc1(model, tokenizer, n: int = 0, batch_size: int = 8, autocast: bool = False) -> float:
    """MC1 accuracy on the first ``n`` questions (0 = all) of TruthfulQA's test split; ``autocast``: bf16 forward
    passes (the log-softmax stays fp32). Model and tokenizer are left as they were (training mode, padding side)."""
    from rlhf.data.sources import truthfulqa_items
    from rlhf.evaluation.likelihood import mc1, sequence_logprobs

    items = [it for it in truthfulqa_items("test") if it.incorrect]
    items = items[:n] if n else items
    if not items:
        raise ValueError("no questions to score")
    chats, answers = [], []
    for item in items:  # the best answer first, then the incorrect ones
        candidates = [item.best_answer, *item.incorrect]
        chats += [[{"role": "user", "content": item.question}]] * len(candidates)
        answers += candidates
    # Scored as evaluation scores (left padding, eval mode); the stage's tokenizer and model are handed back as
    # they were: SFT trains with them next, and only the main rank runs this check.
    was_training, sides = model.training, (tokenizer.padding_side, tokenizer.truncation_side, tokenizer.pad_token)
    model.eval()
    try:
        with runtime_autocast(model.device, autocast):
            flat = sequence_logprobs(model, tokenizer, chats, answers, batch_size)
    finally:
        model.train(was_training)
        tokenizer.padding_side, tokenizer.truncation_side, tokenizer.pad_token = sides
    right, at = 0.0, 0
    for item in items:
        size = 1 + len(item.incorrect)
        right += mc1(flat[at], flat[at + 1:at + size])
        at += size
    return right / len(items)
