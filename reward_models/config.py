"""The reward stage's config; its dataclass defaults are what ``rlhf reward`` runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from reward_models.types import HEADS
from rlhf.core.config import ConfigError, RenamedKeys, RunConfig, check_ranges, shared_field
from rlhf.models.lora import LoraConfig
from rlhf.models.quantization import Quantization, frozen_base_error, quantization_field
from rlhf.core.runtime import Precision
from rlhf.data.sources import PreferenceSourcesConfig


@dataclass
class ModelConfig:
    """The backbone and how a (prompt, response) reaches it."""

    name: str = field(
        default="minilm-l6",
        metadata={"help": "zoo name, local folder or hub id; an encoder, or a causal LM with a chat template"})
    max_length: int = field(
        default=256,
        metadata={"help": "tokens per (prompt, response); the prompt loses its START when it is too long",
                  "range": "[1, 10000000]"})
    min_prompt_tokens: int = field(
        default=64,
        metadata={"help": "a very long response is cut at its end so the prompt keeps at least this many",
                  "range": "[0, 10000000]"})
    freeze_backbone: bool = field(
        default=False,
        metadata={"help": "train only the score head on the backbone's features (a linear probe); needs lora off"})
    # QLoRA: the backbone quantized and frozen, LoRA and the heads in float; final/ then holds the adapter and
    # heads and names the float backbone, quantized again when loaded (reward_models.model.save_reward_model)
    quantization: Quantization = quantization_field()


@dataclass
class DataConfig(PreferenceSourcesConfig):
    """Which preference pairs train which head."""

    pairs_per_head: int = field(
        default=0,
        metadata={"help": "pairs drawn per head each epoch (smaller sets cycle); 0 = the largest head's train set",
                  "range": "[0, inf)"})
    max_train_pairs_per_head: int = field(default=0,
                                          metadata={"help": "cap on each head's train set (quick runs); 0 = all",
                                                    "range": "[0, inf)"})
    length_balance: bool = field(
        default=False,
        metadata={"help": "draw each head's pairs half with the chosen response longer, half not (length predicts nothing)"})


@dataclass
class TrainConfig:
    """Optimisation."""

    epochs: int = field(default=2, metadata={"help": "passes over each head's training pairs", "range": "[1, 1000000]"})
    max_steps: int = shared_field("max_steps", 0)  # > 0: the schedule spans these steps
    batch_size: int = field(
        default=16,
        metadata={"help": "pairs per micro-batch (chosen and rejected go through the model together)",
                  "range": "[1, 1000000]"})
    grad_accum: int = shared_field("grad_accum", 1)
    learning_rate: float = shared_field("learning_rate", 5e-5)  # of the backbone (or its LoRA adapters)
    head_learning_rate: float = field(
        default=1e-3,
        metadata={"help": "the new score head learns from scratch; 0 = train.learning_rate", "range": "[0, inf)"})
    weight_decay: float = shared_field("weight_decay", 0.01)
    warmup_ratio: float = field(default=0.06,
                                metadata={"help": "share of the steps with a linear learning-rate warm-up",
                                          "range": "[0, 1]"})
    max_grad_norm: float = shared_field("max_grad_norm", 1.0)
    use_margin: bool = field(
        default=False,
        metadata={"help": "loss -log sigmoid(r_c - r_r - margin) with each record's margin (0 if none)"})
    # Length debiasing (issue 23; reward_models/losses.py): both leave the saved heads as they are at inference.
    length_covariate: bool = field(
        default=False,
        metadata={"help": "add β_head·(len(chosen) - len(rejected)) to each pair's logit, β fitted on the train pairs "
                          "first: the heads learn what length does not explain"})
    length_decorrelation: float = field(
        default=0.0,
        metadata={"help": "weight of ODIN's |corr(head score, response length)| penalty over each batch (0: off)",
                  "range": "[0, inf)"})
    precision: Precision = field(
        default="auto",
        metadata={"help": "bf16 autocast or fp32; auto: bf16 where the hardware has native bf16 (rlhf.core.runtime)"})
    trunk_cache: Literal["auto", "off"] = field(
        default="auto",
        metadata={"help": "auto: when the layers below the trainable ones are frozen (lora.layers, freeze_backbone), "
                          "run them once per text and keep their output on disk (reward_models/trunk_cache.py)"})
    cache_dir: str = field(
        default="",
        metadata={"help": "where the trunk cache lives; empty: $RLHF_HOME/trunk-cache (~/.cache/rlhf), shared by runs"})
    save_steps: int = shared_field("save_steps", 100)
    save_total_limit: int = shared_field("save_total_limit", 1)


@dataclass
class EvalConfig:
    """Dev accuracy per head every epoch, and the held-out test accuracy at the end."""

    batch_size: int = field(default=64, metadata={"help": "sequences per forward pass", "range": "[1, 1000000]"})
    max_pairs_per_head: int = field(default=0,
                                    metadata={"help": "cap on dev/test pairs per head (quick runs); 0 = all",
                                              "range": "[0, inf)"})
    keep_best: bool = field(default=True,
                            metadata={"help": "the final model is the epoch with the best mean dev accuracy"})
    test: bool = field(default=True,
                       metadata={"help": "report accuracy on the test split (prompts no stage trains on)"})


@dataclass
class CompositeConfig:
    """How the heads combine into the reward PPO optimises (saved in reward_config.json)."""

    weights: dict[str, float] = field(
        default_factory=lambda: {h: 1.0 for h in HEADS},
        metadata={"help": "weight of each head in the composite reward (heads left out keep 1.0)"})
    normalise_on: Literal["dev", "train"] = field(
        default="dev",
        metadata={"help": "responses whose head scores give each head's mean and std"})


@dataclass
class ToxicitySettings:
    """Detoxify, from a local checkpoint only (see reward_models/toxicity.py); null checkpoint = unavailable."""

    checkpoint: str | None = field(
        default=None,
        metadata={"help": 'Detoxify-format file: a dict with "config" and "state_dict", loaded weights_only'})
    huggingface_config_path: str | None = field(
        default=None,
        metadata={"help": "folder with the model's config.json and tokenizer files"})
    label: str = field(default="toxicity", metadata={"help": "which Detoxify class is the toxicity score"})
    weight: float = field(default=1.0, metadata={"help": "composite -= weight * toxicity", "range": "[0, inf)"})
    batch_size: int = field(default=32, metadata={"help": "texts per Detoxify forward pass", "range": "[1, 1000000]"})


@dataclass
class RewardStageConfig:
    """Stage 2: train the HHH reward model (helpful, honest, harmless heads)."""

    renamed_keys: ClassVar[RenamedKeys] = RenamedKeys("reward", {
        "train.lr": "train.learning_rate", "train.head_lr": "train.head_learning_rate",
        "train.grad_accum_steps": "train.grad_accum", "train.checkpoint_every": "train.save_steps",
        "train.keep_checkpoints": "train.save_total_limit", "model.backbone": "model.name", "model.lora": "lora"})

    model: ModelConfig = field(default_factory=ModelConfig)
    # LoRA for a causal-LM backbone (off by default; merged into the weights when the model is saved);
    # target_modules [] = peft's default for the architecture
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(enabled=False, dropout=0.05, target_modules=[]))
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    composite: CompositeConfig = field(default_factory=CompositeConfig)
    toxicity: ToxicitySettings = field(default_factory=ToxicitySettings)
    run: RunConfig = field(default_factory=lambda: RunConfig(log_every=10))
    role: Literal["proxy", "gold"] = field(
        default="proxy",
        metadata={"help": "gold: a judge for `rlhf eval --gold.model`, refused by every training stage"})

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.model.quantization != "none" and not self.lora.enabled:
            raise frozen_base_error("model.quantization", self.model.quantization, "lora.enabled true")
        self.train_partition()

    def train_partition(self) -> str:
        """The half of the train split this model learns from: ``data.partition``, ``auto`` being the role's half.
        A gold judge on pairs of the proxy's half, or a proxy on the gold's, is refused (one line, the key)."""
        partition = self.role if self.data.partition == "auto" else self.data.partition
        if self.role == "gold" and partition != "gold":
            raise ConfigError(f"data.partition: {partition}: overlaps the proxy's half of the train pairs; a gold "
                              "judge learns from the gold half only (gold, or auto)")
        if self.role == "proxy" and partition == "gold":
            raise ConfigError("data.partition: gold: the gold judge's half; a proxy learns from proxy (auto) or all")
        return partition
