"""Stage 1, supervised fine-tuning: config, data mixture and loss mask, TRL trainer set-up, forgetting check.

``pipelines/sft.py`` strings these together; each module has one job:

* :mod:`rlhf.sft.config` – :class:`SFTStageConfig` and its sections
* :mod:`rlhf.sft.data` – weighted mixture, chats tokenized with an assistant-only loss mask
* :mod:`rlhf.sft.trainer` – TRL ``SFTTrainer`` from the config, logging into our MetricsLogger, resume, saving
* :mod:`rlhf.sft.forgetting` – TruthfulQA MC1 by log-likelihood, before vs after
"""
from rlhf.sft.config import DataConfig, ForgettingConfig, MixtureSource, ModelConfig, SFTStageConfig, TrainConfig

__all__ = ["DataConfig", "ForgettingConfig", "MixtureSource", "ModelConfig", "SFTStageConfig", "TrainConfig"]
