"""The SFT stage's config: one dataclass with nested sections; its defaults are what ``rlhf sft`` runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlhf.config import RunConfig
from rlhf.generation import GenerationSettings
from rlhf.lora import LoraConfig
from rlhf.runtime import Precision


@dataclass
class ModelConfig:
    """The policy to fine-tune."""

    name: str = "smollm2-135m-instruct"  # zoo name, tiny-llama, local folder or hub id
    dtype: Literal["float32", "bfloat16"] = "float32"  # of the stored weights; float32 master weights train best


@dataclass
class MixtureSource:
    """One ingredient of the training mixture."""

    source: str  # shipped name (hh-rlhf-harmless, dialogsum, truthfulqa) or a JSONL/CSV path of SFT records
    weight: float = 1.0  # share of the mixture, relative to the other sources' weights
    max_examples: int = 0  # use at most this many of the source's examples (a seeded subset); 0 = all


@dataclass
class DataConfig:
    mixture: list[MixtureSource] = field(default_factory=lambda: [MixtureSource("dialogsum"),
                                                                  MixtureSource("hh-rlhf-harmless", max_examples=400)])
    # Examples in the training mixture; sources are up-/down-sampled to their weights. 0 = the capped sources' total.
    num_examples: int = 0
    dev_max_examples: int = 100  # dev examples per source for eval loss (the sources' "dev" split)
    samples: int = 4  # dev prompts whose generations are logged as a table at the end


@dataclass
class TrainConfig:
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 2e-4
    lr_scheduler: str = "linear"  # any transformers scheduler name: linear, cosine, constant ...
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 4  # per device
    grad_accum: int = 1  # optimiser step every N batches
    eval_batch_size: int = 8
    max_length: int = 512  # tokens; longer examples are dropped (counted in data/dropped_too_long), never cut
    packing: bool = False  # best-fit packing of several examples per row (TRL bfd)
    precision: Precision = "auto"  # bf16 autocast (bf16) or not (fp32); auto: bf16 where it is native (rlhf.runtime)
    gradient_checkpointing: bool = False  # saves memory, costs ~30 % more compute
    save_steps: int = 50  # checkpoint every N steps (resume with --resume)
    save_total_limit: int = 2  # keep the newest N checkpoints
    eval_steps: int = 0  # eval loss every N steps; 0 = only before and after training
    save_merged: bool = False  # LoRA: also write base + adapter merged into <run_dir>/final-merged/


@dataclass
class ForgettingConfig:
    """Catastrophic-forgetting check: a held-out task scored before and after fine-tuning."""

    enabled: bool = True
    task: Literal["truthfulqa_mc"] = "truthfulqa_mc"  # MC1 by log-likelihood on TruthfulQA's test split
    n: int = 60  # questions (0 = all of the test split)
    batch_size: int = 8


@dataclass
class SFTStageConfig:
    """Stage 1: supervised fine-tuning on a chat mixture, full or LoRA."""

    model: ModelConfig = field(default_factory=ModelConfig)
    # lora.enabled false fine-tunes every weight; lora.layers [18, ..., 29] or [-12, ..., -1] (from the top) adapts
    # upper layers only, so backprop stops early: much cheaper on CPU.
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(dropout=0.05))
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generation: GenerationSettings = field(default_factory=lambda: GenerationSettings(do_sample=False))
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(log_every=5))
