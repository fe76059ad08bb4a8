"""Reward shaping of an RL run: from each rollout's composite score to the (B,) score its estimator reads.

The maths are pure functions (``rlhf.rl.rewards``, ``rlhf.rl.objectives``); this holds what they need
across steps: the running moments of ``reward.normalize`` (part of every checkpoint) and the settings.
"""
from __future__ import annotations

import torch

from rlhf.rl.advantages import AdvantageEstimator
from rlhf.rl.experience import Experience
from rlhf.rl.objectives import RewardObjective, normalize_then_sum
from rlhf.rl.reducers import ProcessReducer
from rlhf.rl.rewards import RunningMoments, overlong_penalty, shape_scores


class RewardShaper:
    """EOS penalty, running or per-head normalisation, clipping and the overlong penalty (``reward.*``,
    ``rl.overlong_*``), in the order the estimator needs them."""

    def __init__(self, cfg, objective: RewardObjective, estimator: AdvantageEstimator, reducer: ProcessReducer):
        self.reward, self.rl, self.max_new_tokens = cfg.reward, cfg.rl, cfg.generation.max_new_tokens
        self.objective, self.estimator, self.reducer = objective, estimator, reducer
        self.moments = RunningMoments() if cfg.reward.normalize else None

    def overlong(self, exp: Experience, device: torch.device) -> torch.Tensor:
        """(B,) DAPO's overlong penalty of each response (zeros without ``rl.overlong_buffer``)."""
        lengths = exp.response_mask.sum(1).to(device)  # (B,)
        return overlong_penalty(lengths, self.max_new_tokens, self.rl.overlong_buffer, self.rl.overlong_penalty)

    def scores(self, exp: Experience, composite: torch.Tensor, has_eos: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(B,) scores for the estimator, and whether they already carry its baseline (normalize_then_sum).

        sum: the composite less the missing-EOS penalty, normalised by running moments, clipped; GDPO: each
        head normalised on its own (``objectives.normalize_then_sum``), then the same penalty and clip. The
        overlong penalty is added last, on the scale of the estimator's input."""
        reward, k = self.reward, self.rl.samples_per_prompt
        overlong = self.overlong(exp, composite.device)
        if reward.aggregation == "normalize_then_sum":
            _, columns, weights = self.objective.columns(exp.scores)
            baseline = lambda s: self.estimator.sequence_scores(s, k)  # noqa: E731
            scores = normalize_then_sum(columns.to(composite.device), weights.to(composite.device), baseline)
            scores = shape_scores(scores, has_eos, reward.missing_eos_penalty, None, reward.clip)
            return scores + overlong, True
        if self.moments is not None:  # the moments of every process's scores, so every process normalises alike
            penalised = composite - reward.missing_eos_penalty * (~has_eos).float()
            self.moments.update(self.reducer.gather(penalised).cpu())
        scores = shape_scores(composite, has_eos, reward.missing_eos_penalty, self.moments, reward.clip)
        return scores + overlong, False

    def state_dict(self) -> dict | None:
        return self.moments.state_dict() if self.moments is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.moments is not None and state:
            self.moments.load_state_dict(state)
