"""The DPO stage's config: one dataclass with nested sections; its defaults are what ``rlhf dpo`` runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from rlhf.core.config import RenamedKeys, RunConfig, check_ranges, shared_field
from rlhf.models.lora import LoraConfig
from rlhf.core.runtime import Precision
from rlhf.data.sources import PreferenceSourcesConfig

# TRL's DPOConfig.loss_type values for one pair-wise loss (sigmoid = DPO, ipo = IPO, ...); combinations
# (TRL's list form, MPO) are left out: one name, one loss.
LossType = Literal["sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
                   "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm"]


@dataclass
class ModelConfig:
    """The policy DPO starts from (the SFT model), loaded exactly as the RL stage loads it."""

    name: str = field(default="smollm2-135m-instruct",
                       metadata={"help": "zoo name, folder (merged SFT weights or an SFT adapter folder) or hub id"})
    sft_adapter: str = field(
        default="",
        metadata={"help": "optional SFT LoRA adapter folder, merged into model.name in memory before DPO's LoRA"})


@dataclass
class DataConfig(PreferenceSourcesConfig):
    """Which preference pairs DPO learns from."""

    # Empty: one composite preference over every dimension (each pair counts once, whatever it speaks for).
    dimensions: list[str] = field(
        default_factory=list,
        metadata={"help": "keep pairs labelled with one of these (helpful, honest, harmless); empty: all pairs"})
    max_train_pairs: int = field(default=0,
                                 metadata={"help": "a seeded subset of the training pairs (quick runs); 0 = all",
                                           "range": "[0, inf)"})
    dev_max_pairs: int = field(default=64,
                               metadata={"help": "dev pairs for the eval loss and reward accuracy; 0 = no eval",
                                         "range": "[0, inf)"})


@dataclass
class TrainConfig:
    """The optimisation (TRL DPOTrainer), checkpoints and eval."""

    beta: float = field(default=0.1,
                        metadata={"help": "KL strength: higher stays closer to the SFT policy (IPO: its tau)",
                                  "range": "(0, inf)"})
    loss_type: LossType = field(default="sigmoid",
                                metadata={"help": "sigmoid = DPO, ipo = IPO, or another TRL pair-wise loss"})
    label_smoothing: float = field(default=0.0,
                                   metadata={"help": "robust DPO: probability a label is flipped; exo_pair: epsilon",
                                             "range": "[0, 0.5)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training pairs (fractions allowed)",
                                                 "range": "(0, 1000000]"})
    max_steps: int = shared_field("max_steps", 0)
    learning_rate: float = shared_field("learning_rate", 1e-4)  # of the LoRA weights
    lr_scheduler: str = shared_field("lr_scheduler", "linear")
    warmup_steps: int = shared_field("warmup_steps", 0)
    weight_decay: float = shared_field("weight_decay", 0.0)
    max_grad_norm: float = shared_field("max_grad_norm", 1.0)
    batch_size: int = field(default=4, metadata={"help": "pairs per device per forward/backward",
                                                 "range": "[1, 1000000]"})
    grad_accum: int = shared_field("grad_accum", 1)
    eval_batch_size: int = field(default=8, metadata={"help": "pairs per device, for the eval loss",
                                                      "range": "[1, 1000000]"})
    max_length: int = field(
        default=512,
        metadata={"help": "tokens of prompt + longer answer; longer pairs are dropped (data/dropped_too_long), never cut",
                  "range": "[1, 10000000]"})
    precision: Precision = field(
        default="auto",
        metadata={"help": "bf16 autocast (bf16) or not (fp32); auto: bf16 where it is native (rlhf.core.runtime)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "saves memory, costs ~30 % more compute"})
    threads: int = field(default=0,
                         metadata={"help": "torch threads: 0 follows the cores other processes leave free; n: fixed",
                                   "range": "[0, 4096]"})
    save_steps: int = shared_field("save_steps", 50)
    save_total_limit: int = shared_field("save_total_limit", 2)
    eval_steps: int = field(default=0, metadata={"help": "eval every N steps; 0 = only before and after training",
                                                 "range": "[0, 10000000]"})
    save_merged: bool = field(
        default=True,
        metadata={"help": "also write SFT + DPO weights merged into final/ (as PPO does); the adapter is final/adapter"})


@dataclass
class DPOStageConfig:
    """DPO (or IPO, ...) on preference pairs: LoRA on the SFT policy, the reference = the same weights, adapters off."""

    renamed_keys: ClassVar[RenamedKeys] = RenamedKeys("dpo", {"policy": "model", "policy.model": "model.name"})

    model: ModelConfig = field(default_factory=ModelConfig)
    # Adapters on the top 8 decoder layers, as in the RL stage: backprop stops there, ~3x cheaper on SmolLM2.
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(layers=list(range(-8, 0))))
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(log_every=5))

    def __post_init__(self) -> None:
        check_ranges(self)  # configs built in code; from_dict checks what a file or flag gives
