"""The reward stage's config; its dataclass defaults are what ``rlhf reward`` runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from reward_models.types import HEADS
from rlhf.config import RunConfig
from rlhf.lora import LoraConfig
from rlhf.runtime import Precision


@dataclass
class ModelConfig:
    """The backbone and how a (prompt, response) reaches it."""

    backbone: str = "minilm-l6"  # zoo name, local folder or hub id; an encoder, or a causal LM with a chat template
    max_length: int = 256  # tokens per (prompt, response); the prompt loses its START when it is too long
    min_prompt_tokens: int = 64  # a very long response is cut at its end so the prompt keeps at least this many
    # LoRA for a causal-LM backbone (off by default; merged into the weights when the model is saved);
    # target_modules [] = peft's default for the architecture
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(enabled=False, dropout=0.05, target_modules=[]))


@dataclass
class DataConfig:
    """Which preference pairs train which head."""

    sources: list[str] = field(default_factory=lambda: ["hh-rlhf-harmless", "truthfulqa", "dialogsum"])
    extra_files: list[str] = field(default_factory=list)  # annotated preference files (JSONL/CSV records)
    extra_files_split: Literal["hash", "train"] = "hash"  # hash: split by prompt like shipped data; train: all to train
    pairs_per_head: int = 0  # pairs drawn per head each epoch (smaller sets cycle); 0 = the largest head's train set
    max_train_pairs_per_head: int = 0  # cap on each head's train set (quick runs); 0 = all


@dataclass
class TrainConfig:
    """Optimisation."""

    epochs: int = 2
    max_steps: int = 0  # > 0: stop after this many optimizer steps (quick runs); the schedule spans them
    batch_size: int = 16  # pairs per micro-batch (chosen and rejected go through the model together)
    grad_accum_steps: int = 1
    lr: float = 5e-5  # backbone (or LoRA adapters)
    head_lr: float = 1e-3  # the new score head learns from scratch; 0 = same as lr
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    use_margin: bool = False  # loss -log sigmoid(r_c - r_r - margin) with each record's margin (0 if none)
    precision: Precision = "auto"  # bf16 autocast or fp32; auto: bf16 where the hardware has native bf16 (rlhf.runtime)
    checkpoint_every: int = 100  # optimizer steps between checkpoints (and at each epoch end); 0 = epoch ends only
    keep_checkpoints: int = 1  # how many recent checkpoints to keep on disk


@dataclass
class EvalConfig:
    """Dev accuracy per head every epoch, and the held-out test accuracy at the end."""

    batch_size: int = 64  # sequences per forward pass
    max_pairs_per_head: int = 0  # cap on dev/test pairs per head (quick runs); 0 = all
    keep_best: bool = True  # the final model is the epoch with the best mean dev accuracy
    test: bool = True  # report accuracy on the test split (prompts no stage trains on)


@dataclass
class CompositeConfig:
    """How the heads combine into the reward PPO optimises (saved in reward_config.json)."""

    weights: dict[str, float] = field(default_factory=lambda: {h: 1.0 for h in HEADS})
    normalise_on: Literal["dev", "train"] = "dev"  # responses whose head scores give each head's mean and std


@dataclass
class ToxicitySettings:
    """Detoxify, from a local checkpoint only (see reward_models/toxicity.py); null checkpoint = unavailable."""

    checkpoint: str | None = None  # Detoxify-format file: a dict with "config" and "state_dict", loaded weights_only
    huggingface_config_path: str | None = None  # folder with the model's config.json and tokenizer files
    label: str = "toxicity"  # which Detoxify class is the toxicity score
    weight: float = 1.0  # composite -= weight * toxicity
    batch_size: int = 32


@dataclass
class RewardStageConfig:
    """Stage 2: train the HHH reward model (helpful, honest, harmless heads)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    composite: CompositeConfig = field(default_factory=CompositeConfig)
    toxicity: ToxicitySettings = field(default_factory=ToxicitySettings)
    run: RunConfig = field(default_factory=lambda: RunConfig(log_every=10))
