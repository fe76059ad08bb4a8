"""SFT data: the weighted mixture and the assistant-only loss mask (tiny tokenizer; SmolLM2's when pulled)."""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from rlhf.data.records import SFTRecord
from rlhf.sft.config import DataConfig, MixtureSource
from rlhf.sft.data import (assistant_char_spans, draw, encode_chat, encode_records, mixture_counts,
                           sample_mixture, training_mixture)

FIXTURES = Path(__file__).parent / "fixtures"
CHAT = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Green, like grass."}]


# ---------------------------------------------------------------- mixture


def test_mixture_counts_follow_weights_and_sum_to_total():
    assert mixture_counts([1, 1], 10) == [5, 5]
    assert mixture_counts([3, 1], 8) == [6, 2]
    assert mixture_counts([1, 0, 1], 7) in ([4, 0, 3], [3, 0, 4])
    assert sum(mixture_counts([0.2, 0.3, 0.5], 101)) == 101
    with pytest.raises(ValueError, match="weights"):
        mixture_counts([0, 0], 5)
    with pytest.raises(ValueError, match="weights"):
        mixture_counts([1, -1], 5)


def test_draw_upsamples_by_whole_copies_and_subsamples_without_repeats():
    rng = random.Random(0)
    pool = list(range(4))
    counts = Counter(draw(pool, 10, rng))
    assert sorted(counts.values()) == [2, 2, 3, 3]  # every item twice, two of them three times
    small = draw(pool, 3, rng)
    assert len(set(small)) == 3


def test_sample_mixture_is_deterministic_and_weighted():
    pools = [[f"a{i}" for i in range(50)], [f"b{i}" for i in range(5)]]
    mixed = sample_mixture(pools, [1, 1], total=40, seed=3)
    assert mixed == sample_mixture(pools, [1, 1], total=40, seed=3)
    assert mixed != sample_mixture(pools, [1, 1], total=40, seed=4)
    assert Counter(x[0] for x in mixed) == {"a": 20, "b": 20}  # the small source is upsampled to its share


def test_training_mixture_reads_shipped_sources_and_user_files():
    cfg = DataConfig(mixture=[MixtureSource("dialogsum", weight=3, max_examples=30),
                              MixtureSource(str(FIXTURES / "good" / "sft.jsonl"), weight=1)], num_examples=40)
    records = training_mixture(cfg, seed=0)
    assert len(records) == 40
    sources = Counter(r.source or "user" for r in records)
    assert sources["dialogsum"] == 30 and sum(sources.values()) == 40
    assert training_mixture(cfg, seed=0) == records
    bad = DataConfig(mixture=[MixtureSource(str(FIXTURES / "bad" / "sft_bad_role.jsonl"))])
    with pytest.raises(ValueError, match="sft_bad_role.jsonl:.*role"):
        training_mixture(bad, seed=0)


# ---------------------------------------------------------------- loss mask


def _masked_text(tokenizer, encoded) -> list[str]:
    """The learned tokens as text, one string per contiguous masked run."""
    runs, current = [], []
    for token, bit in zip(encoded.input_ids, encoded.assistant_masks):
        if bit:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_llama_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_path)


def test_mask_covers_assistant_turns_and_their_end_of_turn_token_only(tiny_tokenizer):
    encoded = encode_chat(tiny_tokenizer, CHAT)
    assert len(encoded.input_ids) == len(encoded.assistant_masks)
    assert _masked_text(tiny_tokenizer, encoded) == ["Blue.<|im_end|>", "Green, like grass.<|im_end|>"]
    # pad == EOS == <|im_end|> here: every user turn's <|im_end|> is prompt, every assistant one is learned
    eos = tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.pad_token_id == eos
    eos_bits = [bit for token, bit in zip(encoded.input_ids, encoded.assistant_masks) if token == eos]
    assert eos_bits == [0, 1, 0, 1]


def test_spans_are_character_exact(tiny_tokenizer):
    text, spans = assistant_char_spans(tiny_tokenizer, CHAT)
    assert [text[a:b] for a, b in spans] == ["Blue.<|im_end|>", "Green, like grass.<|im_end|>"]


def test_chat_must_not_start_with_the_assistant(tiny_tokenizer):
    with pytest.raises(ValueError, match="starts with an assistant"):
        encode_chat(tiny_tokenizer, [{"role": "assistant", "content": "hi"}])


def test_too_long_examples_are_dropped_not_cut(tiny_tokenizer):
    short = SFTRecord(messages=CHAT[:2])
    long = SFTRecord(messages=[{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}])
    kept, dropped = encode_records(tiny_tokenizer, [short, long], max_length=64)
    assert dropped == 1 and len(kept) == 1
    last_learned = max(i for i, bit in enumerate(kept[0].assistant_masks) if bit)
    assert kept[0].input_ids[last_learned] == tiny_tokenizer.eos_token_id  # the answer kept whole, stop included


@pytest.mark.real
def test_smollm2_mask_skips_its_default_system_prompt(pulled_zoo):
    from rlhf.models.zoo import load_tokenizer

    tokenizer = load_tokenizer(pulled_zoo["smollm2-135m-instruct"])
    encoded = encode_chat(tokenizer, CHAT)
    text = tokenizer.decode(encoded.input_ids)
    assert "You are a helpful AI assistant named SmolLM" in text  # the template injected it ...
    assert _masked_text(tokenizer, encoded) == ["Blue.<|im_end|>", "Green, like grass.<|im_end|>"]  # ... unlearned
