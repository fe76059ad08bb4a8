"""Zero-, one- and few-shot prompts (in-context learning) as chat messages.

Used by SFT's evaluation and by the evaluation stage, so "few-shot base model" means the same thing in
both. A shot is a solved example (prompt, response). Two layouts:

* ``"chat"`` (default): each shot is a user turn and an assistant turn before the real question, the
  way a chat model sees its own past answers::

      user: <shot 1 prompt>   assistant: <shot 1 response>   ...   user: <prompt>

* ``"inline"``: the shots are written into one user message ("Example 1 ... Answer: ..."), for models
  that follow a single instruction better than a multi-turn history.

Shots are chosen deterministically (:func:`pick_shots`) and never include the prompt being asked.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Sequence

Messages = list[dict[str, str]]
Layout = Literal["chat", "inline"]


@dataclass(frozen=True)
class Shot:
    """One solved example shown to the model before the real prompt."""

    prompt: str
    response: str


def zero_shot(prompt: str, system: str | None = None) -> Messages:
    """The prompt alone (plus an optional system message)."""
    return few_shot(prompt, [], system=system)


def one_shot(prompt: str, shot: Shot, system: str | None = None, layout: Layout = "chat") -> Messages:
    return few_shot(prompt, [shot], system=system, layout=layout)


def few_shot(prompt: str, shots: Sequence[Shot], system: str | None = None, layout: Layout = "chat") -> Messages:
    """Chat messages that show ``shots`` and then ask ``prompt``; the model answers as the next assistant turn."""
    messages: Messages = [{"role": "system", "content": system}] if system else []
    if layout == "chat" or not shots:
        for shot in shots:
            messages += [{"role": "user", "content": shot.prompt}, {"role": "assistant", "content": shot.response}]
        return messages + [{"role": "user", "content": prompt}]
    if layout != "inline":
        raise ValueError(f"unknown few-shot layout {layout!r} (use 'chat' or 'inline')")
    examples = "\n\n".join(f"Example {i}:\n{shot.prompt}\nAnswer: {shot.response}" for i, shot in enumerate(shots, 1))
    return messages + [{"role": "user", "content": f"{examples}\n\nNow your turn:\n{prompt}\nAnswer:"}]


def pick_shots(pool: Sequence[Shot], k: int, seed: int = 0, exclude: str | None = None,
               max_prompt_chars: int | None = None) -> list[Shot]:
    """``k`` shots drawn from ``pool`` by ``seed`` (same seed, same shots), never the prompt ``exclude``.

    ``max_prompt_chars`` keeps only short examples: few-shot prompts grow by every shot, and a prompt
    longer than the model's window would be truncated from the left, cutting the first shots.
    """
    candidates = [s for s in pool if s.prompt != exclude
                  and (max_prompt_chars is None or len(s.prompt) <= max_prompt_chars)]
    if len(candidates) < k:
        raise ValueError(f"only {len(candidates)} candidate shots (need {k}); raise max_prompt_chars or lower k")
    return random.Random(seed).sample(candidates, k)
