"""SFT data: the weighted training mixture, and chats tokenized with an assistant-only loss mask.

The mask is built from the chat template itself, not from special-token ids: every assistant turn is
located by rendering the conversation up to that turn, so it works for any prefix-preserving template
(SmolLM2's adds a default system prompt; that is found, and masked, like any other prompt text). The
assistant's end-of-turn token (``<|im_end|>``, which is also SmolLM2's EOS and pad token) lies inside
the assistant span and is learned: a model that never learns to stop rambles at inference.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence, TypeVar

from rlhf.models.generation import render_chat
from rlhf.data.records import SFTRecord
from rlhf.sft.config import DataConfig, MixtureSource

R = TypeVar("R")


# ---------------------------------------------------------------- the mixture


def mixture_counts(weights: Sequence[float], total: int) -> list[int]:
    """How many of ``total`` examples each source gets, proportional to ``weights`` (largest remainder).

    The counts always sum to ``total``; a zero weight gets zero.
    """
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise ValueError(f"mixture weights must be >= 0 with at least one > 0, got {list(weights)}")
    exact = [w / sum(weights) * total for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def draw(pool: Sequence[R], n: int, rng: random.Random) -> list[R]:
    """``n`` items of ``pool``: a subset when n <= len(pool), else whole copies plus a subset (upsampling).

    Whole copies rather than draws with replacement: every example is seen ``n // len(pool)`` times,
    none is left out by chance.
    """
    if not pool:
        return []
    copies, rest = divmod(n, len(pool))
    return list(pool) * copies + rng.sample(list(pool), rest)


def sample_mixture(pools: Sequence[Sequence[R]], weights: Sequence[float], total: int, seed: int) -> list[R]:
    """A shuffled mixture of ``total`` items with each pool's share set by its weight; same seed, same list."""
    rng = random.Random(seed)
    mixed = [item for pool, n in zip(pools, mixture_counts(weights, total)) for item in draw(pool, n, rng)]
    rng.shuffle(mixed)
    return mixed


def load_source(source: MixtureSource, split: str, seed: int, cap: int = 0) -> list[SFTRecord]:
    """A source's records of one split, capped to a seeded subset of ``cap`` (0 = all)."""
    from rlhf.data.sources import sft_records

    records = sft_records(source.source, split)  # type: ignore[arg-type]
    if cap and len(records) > cap:
        records = random.Random(seed).sample(records, cap)
    return records


def training_mixture(cfg: DataConfig, seed: int) -> list[SFTRecord]:
    pools = [load_source(s, "train", seed, s.max_examples) for s in cfg.mixture]
    for source, pool in zip(cfg.mixture, pools):
        if not pool:
            raise ValueError(f"data.mixture: source {source.source!r} has no training examples")
    total = cfg.num_examples or sum(len(p) for p in pools)
    return sample_mixture(pools, [s.weight for s in cfg.mixture], total, seed)


def dev_records(cfg: DataConfig, seed: int) -> list[SFTRecord]:
    """Every source's dev split (capped per source), unweighted: eval loss is over what the sources hold."""
    return [r for s in cfg.mixture for r in load_source(s, "dev", seed, cfg.dev_max_examples)]


# ---------------------------------------------------------------- tokenization and the loss mask


@dataclass
class EncodedChat:
    input_ids: list[int]  # (seq_len,)
    assistant_masks: list[int]  # (seq_len,) 1 where the token is part of an assistant turn (learned)


def assistant_char_spans(tokenizer, messages: Sequence[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the ``[start, end)`` character span of every assistant turn in it.

    A turn's span starts after the template's assistant header (rendering the turns before it with
    the generation prompt) and ends after the turn's end-of-turn token; whitespace the template puts
    after that token is not learned (the model stops at the token, it never generates the newline).
    """
    full = render_chat(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if i == 0:
            raise ValueError("a chat starts with an assistant turn: nothing prompts it")
        before = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        through = render_chat(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (through.startswith(before) and full.startswith(through)):
            raise ValueError(
                f"the chat template does not render turn {i} as an extension of the turns before it, so the "
                f"assistant tokens cannot be located (does the chat start with a user or system turn?)")
        spans.append((len(before), len(through.rstrip())))
    return full, spans


def encode_chat(tokenizer, messages: Sequence[dict[str, str]]) -> EncodedChat:
    """Token ids of the rendered chat and its assistant mask (a token belongs to the span it starts in)."""
    text, spans = assistant_char_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(lo <= start < hi for lo, hi in spans)) for start, _ in enc["offset_mapping"]]
    return EncodedChat(input_ids=list(enc["input_ids"]), assistant_masks=mask)


def encode_records(tokenizer, records: Sequence[SFTRecord], max_length: int) -> tuple[list[EncodedChat], int]:
    """Encode records; those longer than ``max_length`` are dropped (returned count), never cut.

    Cutting would drop the end of the conversation, which is the answer the model should learn.
    """
    kept, dropped = [], 0
    for record in records:
        encoded = encode_chat(tokenizer, record.messages)
        if len(encoded.input_ids) > max_length or not any(encoded.assistant_masks):
            dropped += 1
            continue
        kept.append(encoded)
    return kept, dropped


def to_dataset(encoded: Sequence[EncodedChat]):
    """A ``datasets.Dataset`` with ``input_ids`` and ``assistant_masks``: TRL turns the mask into labels (-100)."""
    import datasets

    return datasets.Dataset.from_dict({"input_ids": [e.input_ids for e in encoded],
                                       "assistant_masks": [e.assistant_masks for e in encoded]})
