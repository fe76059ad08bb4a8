"""The forgetting check: TruthfulQA MC1 through the evaluation's one log-prob function, on the tiny model."""
from __future__ import annotations

import pytest

from rlhf.sft.forgetting import truthfulqa_mc1


@pytest.fixture(scope="module")
def tiny(tiny_llama_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama_path), AutoTokenizer.from_pretrained(tiny_llama_path)


def test_truthfulqa_mc1_is_the_share_of_questions_whose_best_answer_beats_every_incorrect_one(tiny):
    from rlhf.data.sources import truthfulqa_items
    from rlhf.evaluation.likelihood import sequence_logprobs

    model, tokenizer = tiny
    model.train()
    tokenizer.padding_side, tokenizer.truncation_side = "right", "right"  # as SFT's tokenizer may be
    acc = truthfulqa_mc1(model, tokenizer, n=5, batch_size=3)
    assert model.training  # scored in eval mode, then left as it was: SFT trains with both next
    assert (tokenizer.padding_side, tokenizer.truncation_side) == ("right", "right")
    model.eval()
    right = 0
    for item in [it for it in truthfulqa_items("test") if it.incorrect][:5]:  # one question at a time, unbatched
        chat = [{"role": "user", "content": item.question}]
        scores = [sequence_logprobs(model, tokenizer, [chat], [answer], batch_size=1)[0]
                  for answer in (item.best_answer, *item.incorrect)]
        right += scores[0] > max(scores[1:])
    assert acc == right / 5 and acc in {0.0, 0.2, 0.4, 0.6, 0.8, 1.0}


def test_no_questions_is_an_error(tiny, monkeypatch):
    from rlhf.data import sources

    monkeypatch.setattr(sources, "truthfulqa_items", lambda split: [])
    with pytest.raises(ValueError, match="no questions"):
        truthfulqa_mc1(*tiny)
