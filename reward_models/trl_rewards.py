"""Our reward model as TRL ``reward_funcs``: TRL's trainers (GRPOTrainer, RLOOTrainer ...) load reward models
only with ``num_labels=1``; ours has one label per HHH head. These callables score through ``RewardScorer``.

>>> from trl import GRPOConfig, GRPOTrainer
>>> scorer = RewardScorer.from_pretrained("runs/reward/final")
>>> funcs, weights = trl_reward_funcs(scorer)                    # one per head (+ toxicity)
>>> GRPOTrainer(model=..., reward_funcs=funcs, args=GRPOConfig(reward_weights=weights, ...), ...)
>>> funcs, weights = trl_reward_funcs(scorer, per_head=False)   # one callable: the composite

Per head, a callable returns the head's *standardised* score ``(score - mean) / std`` and ``weights`` are the
saved head weights (toxicity: ``-toxicity.weight`` times the Detoxify probability), so TRL's weighted sum
``sum_i weight_i * func_i`` is exactly our composite, and TRL logs each head under its own name
(``rewards/helpful/mean`` ...). The callables of one set share one scoring pass per batch.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from reward_models.types import RewardScores, Scorer

RewardFunc = Callable[..., list[float]]


def _text(item: Any) -> str:
    """A TRL prompt or completion: a string (standard format) or a list of messages (conversational)."""
    if isinstance(item, str):
        return item
    from rlhf.data.records import messages_to_prompt

    if item and all(m["role"] == "assistant" for m in item):  # a completion: the answer's text
        return "\n\n".join(m["content"] for m in item)
    return messages_to_prompt(list(item))


class _SharedScores:
    """Scores the last batch once for every callable of a set (TRL calls them one after another)."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self._key: tuple | None = None
        self._scores: RewardScores | None = None

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any]) -> RewardScores:
        key = (tuple(map(repr, prompts)), tuple(map(repr, completions)))
        if key != self._key:
            self._scores = self.scorer.score([_text(p) for p in prompts], [_text(c) for c in completions])
            self._key = key
        return self._scores


def _named(name: str, pick: Callable[[RewardScores], Any], shared: _SharedScores) -> RewardFunc:
    def reward(prompts, completions, **kwargs) -> list[float]:  # noqa: ARG001 (TRL passes dataset columns too)
        return [float(v) for v in pick(shared(prompts, completions))]

    reward.__name__ = name  # TRL logs rewards/<__name__>/mean
    return reward


def trl_reward_funcs(scorer, per_head: bool = True) -> tuple[list[RewardFunc], list[float]]:
    """``(reward_funcs, reward_weights)`` for a TRL trainer and its config; see the module docstring."""
    shared = _SharedScores(scorer)
    if not per_head:
        return [_named("composite", lambda s: s.composite, shared)], [1.0]
    config = scorer.config
    funcs = [_named(head, lambda s, h=head: (s.heads[h].float() - config.mean[h]) / config.std[h], shared)
             for head in config.heads]
    weights = [float(config.weights.get(head, 0.0)) for head in config.heads]
    if getattr(scorer, "toxicity", None) is not None:
        funcs.append(_named("toxicity", lambda s: s.toxicity, shared))
        weights.append(-float(config.toxicity.weight))
    return funcs, weights
