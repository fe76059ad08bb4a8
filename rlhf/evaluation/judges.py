"""Proxy and gold reward models: which is which, and the rule that a gold judge never trains anything.

The *proxy* is the reward model a policy is optimised against (PPO's ``reward.model``); a *gold* judge is a
second reward model used only by ``rlhf eval --gold.model`` to measure policies, so reward hacking of the
proxy shows as proxy up, gold flat or down (Gao et al. 2022). ``rlhf reward --role gold`` writes
``"role": "gold"`` into the model's ``reward_config.json``; every training stage that takes a reward model
calls :func:`refuse_gold` before any model loads.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from reward_models.model import REWARD_CONFIG, ScoringConfig
from reward_models.types import HEADS
from rlhf.core.config import ConfigError

GOLD = "gold"


def model_folder(path: str | Path) -> Path:
    """The reward model folder ``path`` names, fully resolved: a run folder means its ``final/``; symlinks followed."""
    path = Path(path).expanduser()
    if not (path / REWARD_CONFIG).is_file() and (path / "final" / REWARD_CONFIG).is_file():
        path = path / "final"
    return path.resolve()


def role_of(path: str | Path) -> str:
    """``proxy`` or ``gold`` as saved in the model's reward_config.json (models saved before roles: proxy)."""
    return ScoringConfig.load(model_folder(path)).role


def refuse_gold(path: str | Path, key: str) -> None:
    """A training stage's check: a gold-marked reward model judges only; training against it is refused."""
    if (model_folder(path) / REWARD_CONFIG).is_file() and role_of(path) == GOLD:
        raise ConfigError(f"{key}: {path} is a gold reward model (role: gold in {REWARD_CONFIG}); it only judges "
                          "(rlhf eval --gold.model) and is never trained against; give a proxy reward model")


def mark_role(folder: str | Path, role: str) -> None:
    """Write ``role`` into a saved reward model's reward_config.json (the reward stage's last step)."""
    scoring = ScoringConfig.load(folder)
    scoring.role = role
    scoring.save(folder)


def held_out_accuracy(path: str | Path) -> dict[str, float | None]:
    """Held-out ``test`` accuracy per head from the reward run's summary.json (None per head where unknown)."""
    summary_path = model_folder(path).parent / "summary.json"
    summary: dict[str, Any] = {}
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    return {h: summary.get(f"test/accuracy_{h}") for h in HEADS}


def describe(path: str | Path) -> dict[str, Any]:
    """What the report says about a judge: its folder, role and held-out accuracy per head."""
    return {"path": str(path), "folder": str(model_folder(path)), "role": role_of(path),
            "test_accuracy": held_out_accuracy(path)}


# ---------------------------------------------------------------- do the two judges agree?


def agreement(proxy_margins: Sequence[float], gold_margins: Sequence[float]) -> tuple[float, int]:
    """(share of pairs both judges order alike, pairs): a pair's margin is score(chosen) - score(rejected); two
    judges agree on it when their margins have the same sign (a tie, margin 0, agrees only with a tie)."""
    if len(proxy_margins) != len(gold_margins):
        raise ValueError(f"{len(proxy_margins)} proxy margins but {len(gold_margins)} gold margins")
    sign = lambda x: (x > 0) - (x < 0)  # noqa: E731
    agreed = sum(sign(p) == sign(g) for p, g in zip(proxy_margins, gold_margins))
    return (agreed / len(proxy_margins) if proxy_margins else float("nan")), len(proxy_margins)


def head_margins(scorer, pairs: Sequence[tuple[str, Any]]) -> list[float]:
    """score(chosen) - score(rejected) on each (head, pair)'s own head, by one reward scorer."""
    prompts = [p.prompt for _, p in pairs]
    chosen = scorer.score_heads(prompts, [p.chosen for _, p in pairs])  # head -> (pairs,)
    rejected = scorer.score_heads(prompts, [p.rejected for _, p in pairs])
    return [float(chosen[h][i] - rejected[h][i]) for i, (h, _) in enumerate(pairs)]


def judge_agreement(proxy, gold, pairs: Sequence[tuple[str, Any]], confidence: float = 0.95) -> dict[str, dict]:
    """Per head, on the same held-out pairs: how often proxy and gold order a pair alike, and each judge's
    accuracy there (each with its Wilson interval and n). Two judges that mostly agree measure the same thing;
    a gold that agrees with the proxy no more than chance cannot confirm the proxy's gains."""
    from rlhf.evaluation.metrics import wilson_interval

    proxy_margins, gold_margins = head_margins(proxy, pairs), head_margins(gold, pairs)
    out: dict[str, dict] = {}
    for head in dict.fromkeys(h for h, _ in pairs):
        rows = [i for i, (h, _) in enumerate(pairs) if h == head]
        share, n = agreement([proxy_margins[i] for i in rows], [gold_margins[i] for i in rows])
        entry = {"n": n, "agreement": share, "agreement_interval": wilson_interval(share * n, n, confidence)}
        for name, margins in (("proxy", proxy_margins), ("gold", gold_margins)):
            right = sum(margins[i] > 0 for i in rows)
            entry[f"{name}_accuracy"] = right / n
            entry[f"{name}_accuracy_interval"] = wilson_interval(right, n, confidence)
        out[head] = entry
    return out
