"""Zero-, one- and few-shot prompt builders."""
from __future__ import annotations

import pytest

from rlhf.data.prompts import Shot, few_shot, one_shot, pick_shots, zero_shot

SHOTS = [Shot("Summarize: A met B.", "A and B met."), Shot("Summarize: C left.", "C went away.")]


def test_zero_shot_is_the_prompt_alone():
    assert zero_shot("Summarize: X.") == [{"role": "user", "content": "Summarize: X."}]
    assert zero_shot("Q", system="Be brief.")[0] == {"role": "system", "content": "Be brief."}


def test_chat_layout_shows_each_shot_as_a_past_exchange():
    messages = few_shot("Summarize: X.", SHOTS, system="Be brief.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[2]["content"] == "A and B met."
    assert messages[-1] == {"role": "user", "content": "Summarize: X."}
    assert one_shot("Summarize: X.", SHOTS[0]) == few_shot("Summarize: X.", SHOTS[:1])


def test_inline_layout_puts_examples_in_one_message():
    [message] = few_shot("Summarize: X.", SHOTS, layout="inline")
    text = message["content"]
    assert message["role"] == "user"
    positions = [text.index(part) for part in ("Example 1:", "A and B met.", "Example 2:", "Summarize: X.")]
    assert positions == sorted(positions)
    assert text.rstrip().endswith("Answer:")
    with pytest.raises(ValueError, match="layout"):
        few_shot("Q", SHOTS, layout="table")  # type: ignore[arg-type]


def test_pick_shots_is_seeded_excludes_the_prompt_and_short_only():
    pool = [Shot(f"prompt {i}" + "x" * i, f"r{i}") for i in range(20)]
    assert pick_shots(pool, 3, seed=1) == pick_shots(pool, 3, seed=1)
    assert pick_shots(pool, 3, seed=1) != pick_shots(pool, 3, seed=2)
    picked = pick_shots(pool, 5, seed=0, exclude=pool[0].prompt, max_prompt_chars=len("prompt 5") + 5)
    assert pool[0] not in picked and all(len(s.prompt) <= 13 for s in picked)
    with pytest.raises(ValueError, match="candidate shots"):
        pick_shots(pool, 3, max_prompt_chars=8)
