"""Scorers PPO can train against: the trained HHH reward model, a plain one-output Hugging Face classifier,
reward functions ``module:function`` beside either, or a toy reward for tests and tiny runs."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import torch

from reward_models.types import RewardScores, Scorer
from rlhf.core.config import ConfigError
from rlhf.rl.config import RewardSection
from rlhf.rl.objectives import HeadTerms, check_constraints, head_terms

PLAIN_HEAD = "reward"  # the one head of a plain sequence classifier


class TokenCountScorer:
    """Toy reward: the share of a response's tokens that equal one chosen token.

    Learnable by any policy (raise that token's probability), so a PPO run on it must show the reward
    rising; used by the tests and the tiny config.
    """

    heads = ["helpful"]  # the one head it returns

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
    from rlhf.evaluation.judges import GOLD, role_of

    finals = sorted(Path(runs_dir).glob("reward*/final"), key=lambda p: p.stat().st_mtime)
    finals = [p for p in finals if not (p / "reward_config.json").is_file() or role_of(p) != GOLD]
    return finals[-1] if finals else None


def import_reward_function(spec: str, key: str):
    """``module:function`` -> the function; one line naming ``key`` when it cannot be imported."""
    import importlib

    module_name, _, name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{key}: cannot import {spec!r} ({type(err).__name__}: {err})") from err
    if not callable(function):
        raise ConfigError(f"{key}: {spec!r} is not callable")
    return function


class FunctionScorer:
    """Reward functions beside a scorer: each ``module:function`` (prompts, completions) -> floats is one more
    head (named after the function) with weight 1, taken as it comes; the composite is the scorer's plus their
    sum. A function that returns the wrong number of scores is caught at its first call (it cannot be before)."""

    def __init__(self, base: Scorer | None, specs: Sequence[str]):
        self.base, self.specs = base, list(specs)
        self.functions = {spec.partition(":")[2]: import_reward_function(spec, f"reward.functions[{i}]")
                          for i, spec in enumerate(self.specs)}

    @property
    def heads(self) -> list[str]:
        return list(getattr(self.base, "heads", [])) + list(self.functions)

    def head_terms(self) -> HeadTerms:
        return head_terms(self.base)  # the functions' heads: weight 1, unstandardised (HeadTerms' defaults)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardScores:
        base = self.base.score(prompts, responses) if self.base is not None else None
        extra = {}
        for i, (name, function) in enumerate(self.functions.items()):
            values = list(function(list(prompts), list(responses)))
            if len(values) != len(responses):
                raise ConfigError(f"reward.functions[{i}]: {self.specs[i]} returned {len(values)} scores for "
                                  f"{len(responses)} completions (checked at its first call)")
            extra[name] = torch.tensor([float(v) for v in values], dtype=torch.float32)  # (B,)
        composite = sum(extra.values(), torch.zeros(len(responses)))
        if base is None:
            return RewardScores(composite=composite, heads=extra)
        return RewardScores(composite=base.composite.float() + composite, heads={**base.heads, **extra},
                            toxicity=base.toxicity, spread=base.spread, head_spread=base.head_spread)


class SequenceClassifierScorer:
    """A plain Hugging Face reward model (``AutoModelForSequenceClassification`` with one output, no
    reward_config.json): one head, ``reward``. Our heads are standardised by statistics measured on reference
    responses when they are trained; a plain model brings none, so its mean and std are measured on the first
    batch it scores and then kept fixed (a fixed affine map: the ordering and the reward's shape do not move)."""

    def __init__(self, model, tokenizer, device: torch.device, batch_size: int = 32):
        self.model, self.tokenizer, self.device, self.batch_size = model.to(device).eval(), tokenizer, device, batch_size
        self.mean: float | None = None
        self.std = 1.0
        self.heads = [PLAIN_HEAD]

    @classmethod
    def from_pretrained(cls, path: str | Path, device: torch.device) -> "SequenceClassifierScorer":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        check_plain_classifier(path)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"  # positions as when scored alone; the model pools its last real token
        model = AutoModelForSequenceClassification.from_pretrained(str(path))
        model.config.pad_token_id = tokenizer.pad_token_id
        return cls(model, tokenizer, device)

    def head_terms(self) -> HeadTerms:
        return HeadTerms({PLAIN_HEAD: 1.0})  # score() returns the head standardised already

    def _text(self, prompt: str, response: str) -> str:
        from rlhf.data.records import prompt_to_messages

        if getattr(self.tokenizer, "chat_template", None):
            messages = prompt_to_messages(prompt) + [{"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return f"{prompt}\n{response}"

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardScores:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        texts = [self._text(p, r) for p, r in zip(prompts, responses)]
        raw = []
        for first in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[first:first + self.batch_size], return_tensors="pt", padding=True,
                                   truncation=True).to(self.device)
            raw.append(self.model(**batch).logits[:, 0].float().cpu())  # (b,)
        raw = torch.cat(raw) if raw else torch.zeros(0)
        if self.mean is None and raw.numel() > 1:  # the first batch fixes the standardisation
            self.mean, self.std = raw.mean().item(), max(raw.std().item(), 1e-6)
        standardised = (raw - (self.mean or 0.0)) / self.std
        return RewardScores(composite=standardised.clone(), heads={PLAIN_HEAD: standardised})


def check_plain_classifier(path: str | Path) -> None:
    """A folder without reward_config.json must be a sequence classifier with exactly one output."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise ConfigError(f"reward.model: {path} is neither a reward model of this project (no reward_config.json) "
                          f"nor a Hugging Face model folder ({err})") from err
    if config.num_labels != 1:
        raise ConfigError(f"reward.model: {path} is a classifier with {config.num_labels} outputs; a plain reward "
                          "model has one (num_labels 1)")


def reward_heads(reward: RewardSection, path: Path | None) -> list[str]:
    """The heads the configured scorer will return, read from files only (no model loads)."""
    from reward_models.model import REWARD_CONFIG, ScoringConfig
    from reward_models.scoring import resolve_model_folder

    if reward.kind == "toy":
        heads = ["helpful"]
    else:
        folder = resolve_model_folder(reward.ensemble[0] if reward.ensemble else path)
        heads = ScoringConfig.load(folder).heads if (folder / REWARD_CONFIG).is_file() else [PLAIN_HEAD]
    return heads + [spec.partition(":")[2] for spec in reward.functions]


def check_ensemble(reward: RewardSection) -> None:
    """Every ``reward.ensemble`` member is a saved reward model and none is a gold judge (before any model loads)."""
    from reward_models.model import REWARD_CONFIG
    from reward_models.scoring import resolve_model_folder
    from rlhf.evaluation.judges import refuse_gold

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
    refuses a gold judge (``reward.model``, ``reward.ensemble[i]``): no policy is trained against the judge.
    Also, before any model loads: every reward function imports, every constraint names a head."""
    path = _check_reward_source(reward, runs_dir)
    for i, spec in enumerate(reward.functions):
        import_reward_function(spec, f"reward.functions[{i}]")
    if reward.constraints:
        check_constraints(reward, reward_heads(reward, path))
    return path


def _check_reward_source(reward: RewardSection, runs_dir: str | Path) -> Path | None:
    if reward.kind == "toy":
        return None
    if reward.ensemble:
        check_ensemble(reward)
        return None
    from reward_models.model import REWARD_CONFIG
    from reward_models.scoring import resolve_model_folder
    from rlhf.evaluation.judges import refuse_gold

    path = Path(reward.model) if reward.model else newest_reward_model(runs_dir)
    if path is None or not path.is_dir():
        raise FileNotFoundError(f"reward.model: no reward model folder ({reward.model or f'{runs_dir}/reward-*/final'}); "
                                "train one with `rlhf reward` or set reward.model")
    if not (resolve_model_folder(path) / REWARD_CONFIG).is_file():
        check_plain_classifier(path)
    refuse_gold(path, "reward.model")
    return path


def load_scorer(reward: RewardSection, tokenizer, device: torch.device, runs_dir: str | Path = "runs") -> Scorer:
    """The scorer the config names: the trained HHH reward model (``reward_models.scoring``), an ensemble of
    them (``reward_models.ensemble``), a plain one-output classifier, or the toy; with ``reward.functions``
    beside it."""
    base = _load_base_scorer(reward, tokenizer, device, runs_dir)
    return FunctionScorer(base, reward.functions) if reward.functions else base


def _load_base_scorer(reward: RewardSection, tokenizer, device: torch.device, runs_dir: str | Path) -> Scorer:
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
    path = _check_reward_source(reward, runs_dir)
    from reward_models.model import REWARD_CONFIG
    from reward_models.scoring import RewardScorer, resolve_model_folder

    print(f"[ppo] reward model: {path}", file=sys.stderr)
    if not (resolve_model_folder(path) / REWARD_CONFIG).is_file():
        return SequenceClassifierScorer.from_pretrained(path, device)
    return RewardScorer.from_pretrained(str(path), device=device)
