"""Items from policies for ``rlhf annotate make-tasks``: two sampled responses per prompt.

With one policy both responses are samples from it (different seeds); with two, one response from
each. Which response is shown as A is drawn at random per prompt, so annotators cannot learn that
"A is always the new model" (position bias); ``source`` records which policy wrote A and which B.
"""
from __future__ import annotations

import random
import sys

from rlhf.annotate.store import NewItem
from rlhf.data.records import prompt_to_messages


def _generate(policy: str, prompts: list[str], max_new_tokens: int, seeds: list[int],
              device: str = "auto") -> list[list[str]]:
    """One list of responses per seed, from one policy (loaded once, on the device ``rlhf.core.runtime`` picks)."""
    from rlhf.models.generation import GenerationSettings, generate_chat
    from rlhf.models.policies import load_tokenizer, load_weights
    from rlhf.core.runtime import select_device

    where = select_device(device, key="--device")
    tokenizer, model = load_tokenizer(policy), load_weights(policy).to(where)  # an adapter folder is merged in
    chats = [prompt_to_messages(p) for p in prompts]
    return [generate_chat(model, tokenizer, chats, GenerationSettings(max_new_tokens=max_new_tokens, seed=seed))
            for seed in seeds]


def sample_items(prompts: list[str], policy: str, policy2: str | None = None, max_new_tokens: int = 128,
                 seed: int = 0, log=lambda msg: print(msg, file=sys.stderr), device: str = "auto") -> list[NewItem]:
    if policy2 is None:
        first, second = _generate(policy, prompts, max_new_tokens, seeds=[seed, seed + 1], device=device)
        names = (policy, policy)
    else:
        # Different seeds here too: a policy compared with itself (a sanity check) must not answer twice alike.
        [first] = _generate(policy, prompts, max_new_tokens, seeds=[seed], device=device)
        [second] = _generate(policy2, prompts, max_new_tokens, seeds=[seed + 1], device=device)
        names = (policy, policy2)
    rng = random.Random(seed)
    items, skipped = [], 0
    for prompt, one, two in zip(prompts, first, second):
        if not one.strip() or not two.strip() or one.strip() == two.strip():
            skipped += 1  # nothing to compare: an empty answer, or both samples the same
            continue
        (text_a, name_a), (text_b, name_b) = rng.sample([(one, names[0]), (two, names[1])], 2)
        items.append(NewItem(prompt=prompt, response_a=text_a, response_b=text_b,
                             source=f"make-tasks: A={name_a} B={name_b}"))
    if skipped:
        log(f"skipped {skipped} of {len(prompts)} prompts: empty or identical responses")
    return items
