"""Direct preference optimisation (DPO, IPO and TRL's other pairwise losses) on TRL's ``DPOTrainer``.

``pipelines/dpo.py`` strings these together; each module has one job:

* :mod:`rlhf.dpo.config` – :class:`DPOStageConfig` and its sections
* :mod:`rlhf.dpo.data` – our preference records, filtered by dimension, in TRL's conversational format
* :mod:`rlhf.dpo.trainer` – TRL ``DPOTrainer`` from the config (LoRA on the SFT policy, reference = adapters
  off), its logs in our namespaces, the final adapter
"""
from rlhf.dpo.config import DataConfig, DPOStageConfig, ModelConfig, TrainConfig

__all__ = ["DataConfig", "DPOStageConfig", "ModelConfig", "TrainConfig"]
