"""A short reward-model run on given preference records: a test fixture (it was ``reward_models.train``'s)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from reward_models.config import RewardStageConfig
from reward_models.train import train_reward_model
from rlhf.core.config import RunConfig
from rlhf.data.records import PreferenceRecord, write_jsonl
from rlhf.core.tracking import read_metrics


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path  # <run>/final: load with RewardScorer.from_pretrained
    losses: list[float]  # loss/pairwise at every step


def train_on_preferences(preferences: Sequence[PreferenceRecord] | str | Path, output_dir: str | Path,
                         backbone: str = "tiny-bert", max_steps: int = 30, batch_size: int = 8,
                         lr: float = 3e-3, max_length: int = 128) -> TrainResult:
    """A short run on preference records (or a preference file), ALL of them used for training.

    For tests (e.g. "does an annotation export train a reward model?"): no shipped data, no
    dev/test split, W&B off; normalisation statistics come from the training pairs themselves.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not isinstance(preferences, (str, Path)):
        write_jsonl(preferences, output_dir / "preferences.jsonl")
        preferences = output_dir / "preferences.jsonl"
    cfg = RewardStageConfig()
    cfg.model.name, cfg.model.max_length, cfg.model.min_prompt_tokens = backbone, max_length, min(32, max_length // 4)
    cfg.data.sources, cfg.data.extra_files, cfg.data.extra_files_split = [], [str(preferences)], "train"
    cfg.data.partition = "all"  # every given pair: no gold judge is in play
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.learning_rate, cfg.train.head_learning_rate = max_steps, batch_size, lr, lr
    cfg.train.warmup_ratio, cfg.train.save_steps, cfg.eval.test = 0.0, 0, False
    cfg.run = RunConfig(output_dir=str(output_dir), run_name="reward", wandb_mode="disabled", log_every=1)
    run_dir = train_reward_model(cfg)
    losses = [m["loss/pairwise"] for m in read_metrics(run_dir / "metrics.jsonl") if "loss/pairwise" in m]
    return TrainResult(run_dir, run_dir / "final", losses)
