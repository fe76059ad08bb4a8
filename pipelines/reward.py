"""Stage 2: train the HHH reward model (helpful, honest, harmless heads).

    python pipelines/reward.py --train.epochs 2          # the defaults: RewardStageConfig()
    accelerate launch pipelines/reward.py --train.learning_rate 3e-5
    rlhf reward --model.name minilm-l6 --data.extra_files '[annotations.jsonl]'
    rlhf reward --run.run_name rm1 --resume          # continue a killed run from its last checkpoint
    rlhf reward --role gold                          # a judge for `rlhf eval --gold.model`; no stage trains on it

The trainer (``reward_models.train.RewardTrainer``: setup, step, evaluate, state) holds the data, the model, the
masked pairwise loss, dev accuracy, normalisation and test accuracy; the model lands in ``<run>/final`` and
loads with ``reward_models.scoring.RewardScorer.from_pretrained``.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and __package__ is None:  # `python pipelines/reward.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reward_models.config import RewardStageConfig  # noqa: E402
from reward_models.train import RewardTrainer  # noqa: E402
from rlhf.data.validation import validate_stage_inputs  # noqa: E402
from rlhf.evaluation.judges import mark_role  # noqa: E402

DEFAULTS = None  # the dataclass defaults are the stage's defaults; presets are --config files


def main(cfg: RewardStageConfig, resume: bool = False) -> Path:
    """Check the inputs; train, select on dev, save ``<run>/final``, report test accuracy; returns the run folder."""
    # 1. inputs checked: a bad file is one line, before any model loads or run folder exists
    validate_stage_inputs("reward", cfg)
    # 2. run folder, pairs, model, optimizer (a checkpoint restored with --resume)
    trainer = RewardTrainer(cfg, resume=resume)
    # 3. train, dev accuracy and a checkpoint every epoch; 4. final model (best dev epoch), test accuracy, summary
    trainer.train()
    run_dir = trainer.finish()
    mark_role(run_dir / "final", cfg.role)  # a gold model is refused by every training stage (rlhf.evaluation.judges)
    print(f"reward model: {run_dir / 'final'}" + (" (gold: judges only)" if cfg.role == "gold" else ""))
    return run_dir


if __name__ == "__main__":  # the same as `rlhf reward ...` (rlhf.stages holds the command)
    from rlhf.stages import STAGES

    sys.exit(STAGES["reward"].cli(sys.argv[1:]))
