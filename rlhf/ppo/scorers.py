"""Scorers PPO can train against: the trained HHH reward model, or a toy reward for tests and tiny runs."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import torch

from reward_models.types import RewardScores, Scorer
from rlhf.config import ConfigError
from rlhf.ppo.config import RewardSection


class TokenCountScorer:
    """Toy reward: the share of a response's tokens that equal one chosen token.

    Learnable by any policy (raise that token's probability), so a PPO run on it must show the reward
    rising; used by the tests and the tiny config.
    """

    def __init__(self, tokenizer, token: str | int):
        self.tokenizer = tokenizer
        self.token_id = token if isinstance(token, int) else _single_token_id(tokenizer, token)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardScores:  # noqa: ARG002
        counts = []
        for response in responses:
            ids = self.tokenizer(response, add_special_tokens=False)["input_ids"]
            counts.append(sum(i == self.token_id for i in ids) / max(len(ids), 1))
        composite = torch.tensor(counts, dtype=torch.float32)  # (B,)
        return RewardScores(composite=composite, heads={"helpful": composite.clone()})


def _single_token_id(tokenizer, token: str) -> int:
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"reward.toy_token {token!r} is {len(ids)} tokens for this tokenizer; pick one token")
    return ids[0]


def newest_reward_model(runs_dir: str | Path = "runs") -> Path | None:
    """The ``final/`` folder of the newest ``runs/reward-*`` run that is not a gold judge, if any."""
    from rlhf.judges import GOLD, role_of

    finals = sorted(Path(runs_dir).glob("reward*/final"), key=lambda p: p.stat().st_mtime)
    finals = [p for p in finals if not (p / "reward_config.json").is_file() or role_of(p) != GOLD]
    return finals[-1] if finals else None


def check_ensemble(reward: RewardSection) -> None:
    """Every ``reward.ensemble`` member is a saved reward model and none is a gold judge (before any model loads)."""
    from reward_models.model import REWARD_CONFIG
    from reward_models.scoring import resolve_model_folder
    from rlhf.judges import refuse_gold

    from reward_models.model import ScoringConfig

    weights = None
    for i, member in enumerate(reward.ensemble):
        if not (resolve_model_folder(member) / REWARD_CONFIG).is_file():
            raise ConfigError(f"reward.ensemble[{i}]: {member} is not a reward model folder (no {REWARD_CONFIG} "
                              "in it or in its final/)")
        refuse_gold(member, f"reward.ensemble[{i}]")
        member_weights = ScoringConfig.load(resolve_model_folder(member)).weights
        weights = member_weights if weights is None else weights
        if reward.aggregate != "mean" and member_weights != weights:  # the aggregated heads get one weighting
            raise ConfigError(f"reward.ensemble[{i}]: weights its heads {member_weights}, reward.ensemble[0] {weights}; "
                              f"reward.aggregate {reward.aggregate} needs the same head weights in every member")


def check_reward_model(reward: RewardSection, runs_dir: str | Path = "runs") -> Path | None:
    """The reward model folder training will use (None for the toy or an ensemble, whose members are checked);
    refuses a gold judge (``reward.model``, ``reward.ensemble[i]``): no policy is trained against the judge."""
    if reward.kind == "toy":
        return None
    if reward.ensemble:
        check_ensemble(reward)
        return None
    from rlhf.judges import refuse_gold

    path = Path(reward.model) if reward.model else newest_reward_model(runs_dir)
    if path is None or not path.is_dir():
        raise FileNotFoundError(f"reward.model: no reward model folder ({reward.model or f'{runs_dir}/reward-*/final'}); "
                                "train one with `rlhf reward` or set reward.model")
    refuse_gold(path, "reward.model")
    return path


def load_scorer(reward: RewardSection, tokenizer, device: torch.device, runs_dir: str | Path = "runs") -> Scorer:
    """The scorer the config names: the trained HHH reward model (``reward_models.scoring``), an ensemble of
    them (``reward_models.ensemble``), or the toy."""
    if reward.kind == "toy":
        return TokenCountScorer(tokenizer, reward.toy_token)
    if reward.ensemble:
        from reward_models.ensemble import RewardEnsemble

        check_ensemble(reward)
        how = (f"uwo, λ {reward.uwo_lambda}" if reward.aggregate == "uwo" else reward.aggregate
               if reward.aggregate == "wco" else f"mean, spread penalty {reward.spread_penalty}")
        print(f"[ppo] reward ensemble of {len(reward.ensemble)}: {', '.join(reward.ensemble)} ({how})", file=sys.stderr)
        return RewardEnsemble.from_pretrained(reward.ensemble, device=device, spread_penalty=reward.spread_penalty,
                                              aggregate=reward.aggregate, uwo_lambda=reward.uwo_lambda)
    path = check_reward_model(reward, runs_dir)
    from reward_models.scoring import RewardScorer

    print(f"[ppo] reward model: {path}", file=sys.stderr)
    return RewardScorer.from_pretrained(str(path), device=device)
