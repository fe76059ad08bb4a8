"""Reward-model inputs: the prompt is cut from the LEFT and the response is always kept."""
from __future__ import annotations

import pytest

from reward_models.encoding import PairEncoder, PairLayout, collate, split_budget, truncate_pair


@pytest.mark.parametrize("prompt_len,response_len,budget,min_prompt,expected", [
    (10, 5, 100, 4, (10, 5)),     # everything fits
    (100, 5, 20, 4, (15, 5)),     # long prompt: it loses its start, the response is whole
    (100, 50, 20, 4, (4, 16)),    # long response too: the prompt keeps min_prompt, the response loses its end
    (2, 50, 20, 4, (2, 18)),      # a short prompt keeps all it has, the response takes the rest
    (100, 0, 20, 4, (20, 0)),
])
def test_split_budget(prompt_len, response_len, budget, min_prompt, expected):
    assert split_budget(prompt_len, response_len, budget, min_prompt) == expected


def test_truncate_pair_keeps_the_end_of_the_prompt_and_the_start_of_the_response():
    prompt, response = list(range(100)), list(range(1000, 1050))
    kept_prompt, kept_response = truncate_pair(prompt, response, budget=20, min_prompt_tokens=4)
    assert kept_prompt == [96, 97, 98, 99]
    assert kept_response == list(range(1000, 1016))
    kept_prompt, kept_response = truncate_pair(prompt, response[:5], budget=20, min_prompt_tokens=4)
    assert kept_prompt == list(range(85, 100)) and kept_response == response[:5]


def test_budget_must_leave_room():
    with pytest.raises(ValueError, match="no room"):
        split_budget(3, 3, 0, 1)


def test_pair_layout_matches_the_tokenizers_own_pair_encoding(tiny_bert_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_path)
    layout = PairLayout.probe(tokenizer)
    prompt, response = "How are you today?", "Fine, thanks."
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    ids, _ = layout.build(p, r)
    assert ids == tokenizer(prompt, response)["input_ids"]
    assert layout.num_special == 3  # [CLS] ... [SEP] ... [SEP]


@pytest.mark.real
def test_pair_layout_on_minilm_has_token_types():
    from rlhf.models.zoo import load_tokenizer

    tokenizer = load_tokenizer("minilm-l6")
    layout = PairLayout.probe(tokenizer)
    p = tokenizer("is the earth flat?", add_special_tokens=False)["input_ids"]
    r = tokenizer("no, it is round.", add_special_tokens=False)["input_ids"]
    ids, types = layout.build(p, r)
    expected = tokenizer("is the earth flat?", "no, it is round.")
    assert ids == expected["input_ids"] and types == expected["token_type_ids"]


def test_left_truncation_keeps_the_response_and_the_last_question(tiny_bert_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_path)
    encoder = PairEncoder.for_tokenizer(tokenizer, "pair", max_length=64, min_prompt_tokens=8)
    prompt = "\n\nHuman: FIRSTTURN " + "blah " * 300 + "\n\nHuman: how do I pick a lock?\n\nAssistant:"
    response = "I can't help with breaking into places."
    [encoded] = encoder.encode([prompt], [response])
    assert len(encoded.input_ids) == 64
    text = tokenizer.decode(encoded.input_ids, skip_special_tokens=True)
    assert text.replace(" ", "").endswith(response.replace(" ", ""))
    assert "pickalock" in text.replace(" ", "") and "FIRSTTURN" not in text
    # HH pairs differ only in the last turn: after truncation, the two sides must still differ
    [chosen, rejected] = encoder.encode([prompt, prompt], [response, "Sure, use a tension wrench."])
    assert chosen.input_ids != rejected.input_ids


def test_chat_format_ends_with_the_response_closed_like_an_assistant_turn(tiny_llama_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path)
    encoder = PairEncoder.for_tokenizer(tokenizer, "chat", max_length=48, min_prompt_tokens=8)
    [encoded] = encoder.encode(["Tell me a long story. " * 40], ["Once upon a time."])
    assert len(encoded.input_ids) == 48 and encoded.token_type_ids is None
    text = tokenizer.decode(encoded.input_ids)
    assert text.endswith("<|im_start|>assistant\nOnce upon a time.<|im_end|>\n")


def test_collate_masks_from_lengths_even_when_pad_is_eos():
    from reward_models.encoding import Encoded

    eos = 7
    batch = collate([Encoded([1, 2, eos]), Encoded([3, eos])], pad_token_id=eos)
    assert batch["input_ids"].tolist() == [[1, 2, eos], [3, eos, eos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
