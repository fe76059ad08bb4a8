"""The scoring API PPO and evaluation use: (prompts, responses) -> :class:`RewardScores`.

>>> scorer = RewardScorer.from_pretrained("runs/reward-.../final")          # or the run folder itself
>>> scores = scorer.score(["How do I bake bread?"], ["Mix flour, water, yeast and salt ..."])
>>> scores.composite, scores.heads["harmless"], scores.toxicity

composite = sum_h weight_h * (score_h - mean_h) / std_h  -  toxicity_weight * toxicity
(the toxicity term only when a Detoxify checkpoint is configured; mean/std were measured on a
reference set at the end of training and saved in reward_config.json).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping, Sequence

import torch

from reward_models.config import ToxicitySettings
from reward_models.model import REWARD_CONFIG, load_reward_model, score_sequences
from reward_models.toxicity import ToxicityScorer, load_toxicity
from reward_models.types import RewardScores
from rlhf.core.runtime import Precision, select_device, use_bf16


def normalise_heads(heads: Mapping[str, torch.Tensor], mean: Mapping[str, float],
                    std: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """name -> (batch,) float32 ``(score - mean) / std``: each head on the scale of its reference responses."""
    return {name: (scores.float() - mean[name]) / std[name] for name, scores in heads.items()}


def composite_reward(heads: Mapping[str, torch.Tensor], weights: Mapping[str, float], mean: Mapping[str, float],
                     std: Mapping[str, float], toxicity: torch.Tensor | None = None,
                     toxicity_weight: float = 0.0) -> torch.Tensor:
    """(batch,) weighted sum of standardised head scores, minus the toxicity penalty when there is one."""
    total = torch.zeros_like(next(iter(heads.values())), dtype=torch.float32)
    for name, scores in normalise_heads(heads, mean, std).items():
        total = total + weights.get(name, 0.0) * scores
    if toxicity is not None:
        total = total - toxicity_weight * toxicity.float()
    return total


def resolve_model_folder(path: str | Path) -> Path:
    """A reward model folder, or a reward run folder (whose ``final/`` is used)."""
    path = Path(path)
    if not (path / REWARD_CONFIG).is_file() and (path / "final" / REWARD_CONFIG).is_file():
        return path / "final"
    return path


class RewardScorer:
    """Batched, no-grad HHH scoring with optional Detoxify; implements the ``Scorer`` protocol."""

    def __init__(self, model, encoder, scoring, toxicity: ToxicityScorer | None, device: torch.device,
                 bf16: bool, batch_size: int):
        self.model, self.encoder, self.config = model, encoder, scoring
        self.toxicity, self.device, self.bf16, self.batch_size = toxicity, device, bf16, batch_size

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None,
                        toxicity: ToxicitySettings | ToxicityScorer | Literal["config"] | None = "config",
                        precision: Precision = "auto", batch_size: int = 32,
                        weights: Mapping[str, float] | None = None) -> "RewardScorer":
        """Load a saved reward model.

        toxicity: ``"config"`` = the Detoxify settings saved in reward_config.json; a ToxicitySettings
            or a ready ToxicityScorer to use instead; None = no toxicity (scores carry toxicity=None).
        precision: bf16 autocast or fp32; ``auto`` = bf16 where ``device`` has native bf16 (``rlhf.core.runtime``).
        weights: override the saved head weights (e.g. ``{"harmless": 2.0}``; missing heads keep theirs).
        """
        device = select_device() if device is None else torch.device(device)  # None: rlhf.core.runtime decides
        model, encoder, scoring = load_reward_model(resolve_model_folder(path))
        model.to(device)
        if weights:
            unknown = set(weights) - set(scoring.heads)
            if unknown:
                raise ValueError(f"unknown head {sorted(unknown)[0]!r} in weights (heads: {', '.join(scoring.heads)})")
            scoring.weights = {**scoring.weights, **weights}
        if isinstance(toxicity, ToxicityScorer):
            toxicity_scorer, scoring.toxicity = toxicity, toxicity.settings
        else:
            settings = scoring.toxicity if toxicity == "config" else (toxicity or ToxicitySettings())
            scoring.toxicity = settings
            toxicity_scorer = load_toxicity(settings, device)
        return cls(model, encoder, scoring, toxicity_scorer, device, use_bf16(precision, device), batch_size)

    @property
    def heads(self) -> list[str]:
        return list(self.config.heads)

    def score_heads(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        """Raw per-head scores: name -> (batch,) float32."""
        sequences = self.encoder.encode(prompts, responses)
        raw = score_sequences(self.model, sequences, self.encoder.pad_token_id, self.batch_size, self.bf16)  # (batch, heads)
        return {name: raw[:, i] for i, name in enumerate(self.config.heads)}

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardScores:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return RewardScores(composite=torch.zeros(0), heads={h: torch.zeros(0) for h in self.heads},
                                toxicity=None if self.toxicity is None else torch.zeros(0))
        heads = self.score_heads(prompts, responses)
        toxicity = self.toxicity.score(responses) if self.toxicity is not None else None  # (batch,) or None
        composite = composite_reward(heads, self.config.weights, self.config.mean, self.config.std,
                                     toxicity, self.config.toxicity.weight)
        return RewardScores(composite=composite, heads=heads, toxicity=toxicity)
