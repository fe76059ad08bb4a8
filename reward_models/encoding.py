"""Turning (prompt, response) texts into reward-model inputs, cutting the prompt from the LEFT.

The prompt and the response are tokenised separately; when the pair is too long, the start of the
prompt is dropped, so the final response (what is being judged) and the end of the prompt (the last
question) are always kept. HH-RLHF pairs differ only in their last turn: cutting from the right would
train on two identical texts.

Two input formats:
* ``pair`` (encoders such as MiniLM/BERT): ``[CLS] prompt [SEP] response [SEP]`` with token types,
  laid out exactly as the tokenizer lays out a text pair (learned by probing it: :class:`PairLayout`).
* ``chat`` (causal LMs with a chat template, such as SmolLM2): the prompt as chat messages with the
  generation prompt, followed by the response closed the way the template closes an assistant turn.
  The score is read at the last real token (see :mod:`reward_models.model`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

from rlhf.models.generation import render_chat
from rlhf.data.records import prompt_to_messages

InputFormat = Literal["pair", "chat"]


@dataclass(frozen=True)
class PairLayout:
    """Special tokens a tokenizer puts around a text pair: ``prefix A middle B suffix``, with token types."""

    prefix: tuple[int, ...] = ()
    middle: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()
    # token type of each special token, and of the A (prompt) and B (response) tokens; None: no token types
    types: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int, int] | None = None

    @property
    def num_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    @classmethod
    def probe(cls, tokenizer) -> "PairLayout":
        """Learn the layout by encoding the pair ("x", "x") and finding where the two x's landed."""
        x = tokenizer("x", add_special_tokens=False)["input_ids"]
        enc = tokenizer("x", "x", add_special_tokens=True)
        ids = list(enc["input_ids"])
        spots = [i for i in range(len(ids) - len(x) + 1) if ids[i:i + len(x)] == x]
        if len(spots) < 2:
            raise ValueError(f"cannot find where {type(tokenizer).__name__} puts the two texts of a pair: {ids}")
        a, b = spots[0], spots[-1]
        prefix, middle, suffix = ids[:a], ids[a + len(x):b], ids[b + len(x):]
        types = None
        if "token_type_ids" in enc:
            t = list(enc["token_type_ids"])
            types = (tuple(t[:a]), tuple(t[a + len(x):b]), tuple(t[b + len(x):]), t[a], t[b])
        return cls(tuple(prefix), tuple(middle), tuple(suffix), types)

    def build(self, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> tuple[list[int], list[int] | None]:
        """(input_ids, token_type_ids or None) of ``prefix prompt middle response suffix``."""
        ids = [*self.prefix, *prompt_ids, *self.middle, *response_ids, *self.suffix]
        if self.types is None:
            return ids, None
        pre_t, mid_t, suf_t, a_t, b_t = self.types
        type_ids = [*pre_t, *([a_t] * len(prompt_ids)), *mid_t, *([b_t] * len(response_ids)), *suf_t]
        return ids, type_ids


def split_budget(prompt_len: int, response_len: int, budget: int, min_prompt_tokens: int) -> tuple[int, int]:
    """How many prompt and response tokens fit in ``budget`` (tokens left after the special tokens).

    The response is kept whole unless that would leave the prompt fewer than ``min_prompt_tokens``
    (or fewer than it has); then the response loses its END. The prompt gets what remains and loses
    its START. Returns (prompt tokens kept, response tokens kept).
    """
    if budget <= 0:
        raise ValueError(f"max_length leaves no room for text (budget {budget})")
    prompt_floor = min(prompt_len, min_prompt_tokens, budget)
    keep_response = min(response_len, budget - prompt_floor)
    keep_prompt = min(prompt_len, budget - keep_response)
    return keep_prompt, keep_response


def truncate_pair(prompt_ids: Sequence[int], response_ids: Sequence[int], budget: int,
                  min_prompt_tokens: int) -> tuple[list[int], list[int]]:
    """Cut the prompt from the left (keep its end) and, only if it must, the response from the right."""
    keep_prompt, keep_response = split_budget(len(prompt_ids), len(response_ids), budget, min_prompt_tokens)
    prompt_kept = list(prompt_ids[len(prompt_ids) - keep_prompt:]) if keep_prompt else []
    return prompt_kept, list(response_ids[:keep_response])


@dataclass
class Encoded:
    """One tokenised (prompt, response): the model input of a single sequence."""

    input_ids: list[int]
    token_type_ids: list[int] | None = None


@dataclass
class PairEncoder:
    """Encodes (prompt, response) texts for one backbone; saved settings rebuild the same encoder."""

    tokenizer: object
    input_format: InputFormat
    max_length: int
    min_prompt_tokens: int = 64
    layout: PairLayout = field(default_factory=PairLayout)

    @classmethod
    def for_tokenizer(cls, tokenizer, input_format: InputFormat, max_length: int,
                      min_prompt_tokens: int = 64) -> "PairEncoder":
        if tokenizer.pad_token is None:  # causal LMs without a pad token pad with EOS; masks come from lengths
            tokenizer.pad_token = tokenizer.eos_token
        layout = PairLayout.probe(tokenizer) if input_format == "pair" else PairLayout()
        model_max = getattr(tokenizer, "model_max_length", None) or max_length
        return cls(tokenizer, input_format, min(max_length, model_max), min_prompt_tokens, layout)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def _texts(self, prompt: str, response: str) -> tuple[str, str]:
        if self.input_format == "pair":
            return prompt, response
        messages = prompt_to_messages(prompt)
        prompt_text = render_chat(self.tokenizer, messages, add_generation_prompt=True)
        full = render_chat(self.tokenizer, [*messages, {"role": "assistant", "content": response}],
                           add_generation_prompt=False)
        if full.startswith(prompt_text):  # the response closed exactly as the template closes a turn
            return prompt_text, full[len(prompt_text):]
        return prompt_text, response + (self.tokenizer.eos_token or "")

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Encoded]:
        """Tokenise each pair, prompt and response apart, and fit it into ``max_length`` tokens."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        texts = [self._texts(p, r) for p, r in zip(prompts, responses)]
        tok = lambda xs: self.tokenizer(list(xs), add_special_tokens=False, verbose=False)["input_ids"]  # noqa: E731
        prompt_ids = tok(t[0] for t in texts) if texts else []
        response_ids = tok(t[1] for t in texts) if texts else []
        budget = self.max_length - self.layout.num_special
        out = []
        for p_ids, r_ids in zip(prompt_ids, response_ids):
            p_kept, r_kept = truncate_pair(p_ids, r_ids, budget, self.min_prompt_tokens)
            ids, type_ids = self.layout.build(p_kept, r_kept)
            out.append(Encoded(ids, type_ids))
        return out


def collate(sequences: Sequence[Encoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence; the attention mask comes from lengths (pad may equal EOS)."""
    width = max(len(s.input_ids) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)  # (batch, width)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)  # (batch, width)
    with_types = sequences[0].token_type_ids is not None
    token_type_ids = torch.zeros((len(sequences), width), dtype=torch.long) if with_types else None
    for i, seq in enumerate(sequences):
        n = len(seq.input_ids)
        input_ids[i, :n] = torch.tensor(seq.input_ids)
        attention_mask[i, :n] = 1
        if with_types:
            token_type_ids[i, :n] = torch.tensor(seq.token_type_ids)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if with_types:
        batch["token_type_ids"] = token_type_ids
    return batch
