"""Stage 2: train the HHH reward model (helpful, honest, harmless heads).

    python pipelines/reward.py --train.epochs 2          # the defaults: RewardStageConfig()
    accelerate launch pipelines/reward.py --train.learning_rate 3e-5
    rlhf reward --model.name minilm-l6 --data.extra_files '[annotations.jsonl]'
    rlhf reward --run.run_name rm1 --resume          # continue a killed run from its last checkpoint
    rlhf reward --role gold                          # a judge for `rlhf eval --gold.model`; no stage trains on it

The steps (data, model, masked pairwise loss, dev accuracy, normalisation, test accuracy) are
numbered in :func:`reward_models.train.train_reward_model`; the model lands in ``<run>/final`` and
loads with ``reward_models.scoring.RewardScorer.from_pretrained``.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and __package__ is None:  # `python pipelines/reward.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reward_models.config import RewardStageConfig  # noqa: E402
from reward_models.train import train_reward_model  # noqa: E402
from rlhf.config import stage_cli  # noqa: E402
from rlhf.datatools import validate_stage_inputs  # noqa: E402
from rlhf.judges import mark_role  # noqa: E402

DEFAULTS = None  # the dataclass defaults are the stage's defaults; presets are --config files


def main(cfg: RewardStageConfig, resume: bool = False) -> Path:
    """Check the inputs; train, select on dev, save ``<run>/final``, report test accuracy; returns the run folder."""
    validate_stage_inputs("reward", cfg)  # a bad file is one line, before any model loads or run folder exists
    run_dir = train_reward_model(cfg, resume=resume)
    mark_role(run_dir / "final", cfg.role)  # a gold model is refused by every training stage (rlhf.judges)
    print(f"reward model: {run_dir / 'final'}" + (" (gold: judges only)" if cfg.role == "gold" else ""))
    return run_dir


def cli(argv) -> int:
    return stage_cli(RewardStageConfig, DEFAULTS, main, argv, extra_flags=("resume",))


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
