"""The forgetting check's maths (against slow references) and its padding-independence on the tiny model."""
from __future__ import annotations

import math

import pytest
import torch

from rlhf.sft.forgetting import answer_logprobs, mc1_accuracy, sequence_logprobs, truthfulqa_mc1


def _slow_sequence_logprobs(logits, input_ids, mask):
    out = []
    for b in range(logits.shape[0]):
        total = 0.0
        for t in range(1, logits.shape[1]):
            if mask[b, t]:
                probs = torch.softmax(logits[b, t - 1].double(), dim=-1)
                total += math.log(probs[input_ids[b, t]].item())
        out.append(total)
    return torch.tensor(out)


def test_sequence_logprobs_matches_a_token_by_token_reference():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)  # (B, T, V)
    ids = torch.randint(0, 11, (3, 7))
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0, 0]])
    torch.testing.assert_close(sequence_logprobs(logits, ids, mask), _slow_sequence_logprobs(logits, ids, mask).float())


def test_mc1_counts_a_question_right_only_when_the_best_answer_beats_every_wrong_one():
    assert mc1_accuracy([[-1.0, -2.0, -3.0]]) == 1.0
    assert mc1_accuracy([[-2.0, -1.0, -3.0]]) == 0.0
    assert mc1_accuracy([[-1.0, -1.0]]) == 0.0  # a tie is not a win
    assert mc1_accuracy([[-1.0, -2.0], [-3.0, -2.0], [0.0, -5.0], [-9.0, -1.0]]) == 0.5
    with pytest.raises(ValueError):
        mc1_accuracy([])


@pytest.fixture(scope="module")
def tiny(tiny_llama_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama_path), AutoTokenizer.from_pretrained(tiny_llama_path)


def test_batched_scores_equal_one_at_a_time_scores(tiny):
    """Right padding with pad == EOS must not change any score: masks come from lengths, not ids."""
    model, tokenizer = tiny
    chats = [[{"role": "user", "content": "Is the sky blue?"}, {"role": "assistant", "content": a}]
             for a in ("Yes.", "No, it is green on Tuesdays and purple at night.", "Sometimes")]
    batched = answer_logprobs(model, tokenizer, chats, batch_size=3)
    single = [answer_logprobs(model, tokenizer, [chat], batch_size=1)[0] for chat in chats]
    assert batched == pytest.approx(single, abs=1e-4)
    assert all(score < 0 for score in batched)


def test_truthfulqa_mc1_runs_on_the_held_out_split(tiny):
    model, tokenizer = tiny
    acc = truthfulqa_mc1(model, tokenizer, n=5, batch_size=8)
    assert acc in {0.0, 0.2, 0.4, 0.6, 0.8, 1.0}
