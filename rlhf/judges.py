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
from typing import Any

from reward_models.model import REWARD_CONFIG, ScoringConfig
from reward_models.types import HEADS
from rlhf.config import ConfigError

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
