"""The SFT stage's config: one dataclass with nested sections; its defaults are what ``rlhf sft`` runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlhf.core.config import ConfigError, RunConfig, check_ranges, shared_field
from rlhf.models.generation import GenerationSettings
from rlhf.models.lora import LoraConfig
from rlhf.models.quantization import Quantization, frozen_base_error, quantization_field
from rlhf.core.runtime import Precision


@dataclass
class ModelConfig:
    """The policy to fine-tune."""

    name: str = field(default="smollm2-135m-instruct",
                      metadata={"help": "zoo name, tiny-llama, local folder or hub id"})
    dtype: Literal["float32", "bfloat16"] = field(
        default="float32",
        metadata={"help": "dtype the weights are stored (and trained) in; float32 master weights train best. Not "
                          "train.precision, which is the autocast of the forward over them"})
    quantization: Quantization = quantization_field()


@dataclass
class PromptTuningConfig:
    """Prompt tuning (peft): a soft prompt of virtual tokens learned in front of every example, the model frozen."""

    enabled: bool = field(default=False,
                          metadata={"help": "train only a soft prompt instead of LoRA or every weight (needs lora.enabled false)"})
    num_virtual_tokens: int = field(default=20, metadata={"help": "soft-prompt length in tokens (20-100 is usual)",
                                                          "range": "[1, 1000000]"})
    init_text: str = field(
        default="Follow the user's instructions and answer helpfully and concisely.",
        metadata={"help": "start the virtual tokens as this text's embeddings (repeated or cut to length); '': random"})


@dataclass
class MixtureSource:
    """One ingredient of the training mixture."""

    source: str = field(
        metadata={"help": "shipped name (hh-rlhf-harmless, dialogsum, truthfulqa) or a JSONL/CSV path of SFT records"})
    weight: float = field(default=1.0,
                          metadata={"help": "share of the mixture, relative to the other sources' weights",
                                    "range": "(0, inf)"})
    max_examples: int = field(
        default=0,
        metadata={"help": "use at most this many of the source's examples (a seeded subset); 0 = all",
                  "range": "[0, inf)"})


@dataclass
class DataConfig:
    """What SFT trains on and how it is checked."""

    mixture: list[MixtureSource] = field(
        default_factory=lambda: [MixtureSource("dialogsum"), MixtureSource("hh-rlhf-harmless", max_examples=400)],
        metadata={"help": "training sources: [{source, weight, max_examples}, ...]"})
    num_examples: int = field(
        default=0,
        metadata={"help": "training examples, sources re-sampled to their weights; 0 = the capped sources' total",
                  "range": "[0, inf)"})
    dev_max_examples: int = field(
        default=100,
        metadata={"help": "dev examples per source for eval loss (the sources' dev split)", "range": "[0, inf)"})
    samples: int = field(default=4, metadata={"help": "dev prompts whose generations are logged as a table at the end",
                                              "range": "[0, inf)"})


@dataclass
class TrainConfig:
    """The optimisation (TRL SFTTrainer), checkpoints and eval loss."""

    epochs: float = field(default=1.0, metadata={"help": "passes over the training mixture (fractions allowed)",
                                                 "range": "(0, 1000000]"})
    max_steps: int = shared_field("max_steps", 0)
    learning_rate: float = shared_field("learning_rate", 2e-4)
    lr_scheduler: str = shared_field("lr_scheduler", "linear")
    warmup_steps: int = shared_field("warmup_steps", 0)
    weight_decay: float = shared_field("weight_decay", 0.0)
    max_grad_norm: float = shared_field("max_grad_norm", 1.0)
    batch_size: int = field(default=4, metadata={"help": "examples per device per forward/backward",
                                                 "range": "[1, 1000000]"})
    grad_accum: int = shared_field("grad_accum", 1)
    eval_batch_size: int = field(default=8, metadata={"help": "per device, for the eval loss", "range": "[1, 1000000]"})
    max_length: int = field(
        default=512,
        metadata={"help": "tokens; longer examples are dropped (counted in data/dropped_too_long), never cut",
                  "range": "[1, 10000000]"})
    packing: bool = field(default=False, metadata={"help": "best-fit packing of several examples per row (TRL bfd)"})
    precision: Precision = field(
        default="auto",
        metadata={"help": "bf16 autocast (bf16) or not (fp32); auto: bf16 where it is native (rlhf.core.runtime)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "saves memory, costs ~30 % more compute"})
    save_steps: int = shared_field("save_steps", 50)
    save_total_limit: int = shared_field("save_total_limit", 2)
    eval_steps: int = field(default=0, metadata={"help": "eval loss every N steps; 0 = only before and after training",
                                                 "range": "[0, 10000000]"})
    save_merged: bool = field(default=False,
                              metadata={"help": "LoRA: also write base + adapter merged into <run_dir>/final-merged/"})


@dataclass
class ForgettingConfig:
    """Catastrophic-forgetting check: TruthfulQA MC1 (by log-likelihood, its test split) before and after."""

    enabled: bool = field(default=True, metadata={"help": "score the forgetting task before and after fine-tuning"})
    n: int = field(default=60, metadata={"help": "questions (0 = all of the test split)", "range": "[0, inf)"})
    batch_size: int = field(default=8, metadata={"help": "questions per forward pass", "range": "[1, 1000000]"})


@dataclass
class SFTStageConfig:
    """Stage 1: supervised fine-tuning on a chat mixture: LoRA, prompt tuning or every weight."""

    model: ModelConfig = field(default_factory=ModelConfig)
    # lora.enabled false fine-tunes every weight; lora.layers [18, ..., 29] or [-12, ..., -1] (from the top) adapts
    # upper layers only, so backprop stops early: much cheaper on CPU.
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(dropout=0.05))
    prompt_tuning: PromptTuningConfig = field(default_factory=PromptTuningConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generation: GenerationSettings = field(default_factory=lambda: GenerationSettings(do_sample=False))
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(log_every=5))

    @property
    def method(self) -> str:
        """What the stage trains: "lora", "prompt_tuning" or "full" (every weight)."""
        return "prompt_tuning" if self.prompt_tuning.enabled else "lora" if self.lora.enabled else "full"

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.model.quantization != "none" and self.method == "full":
            raise frozen_base_error("model.quantization", self.model.quantization,
                                    "lora.enabled true, or prompt_tuning.enabled true")
        if self.model.quantization != "none" and self.train.save_merged:
            raise ConfigError("train.save_merged: merging into quantized weights would round the update away; "
                              "merge the adapter onto the unquantized base instead (final/ names it)")
        pt = self.prompt_tuning
        if not pt.enabled:
            return
        if self.lora.enabled:
            raise ConfigError("prompt_tuning.enabled: LoRA is on as well; train one adapter kind at a time "
                              "(add --lora.enabled false)")
        if self.train.save_merged:
            raise ConfigError("train.save_merged: a soft prompt cannot be merged into the weights; "
                              "final/ loads as an adapter (rlhf chat, rlhf eval, AutoPeftModelForCausalLM)")
        if self.train.packing:
            # peft prepends the soft prompt once per row: packed examples after the first would not see it
            raise ConfigError("train.packing: prompt tuning prepends its soft prompt once per row, so packed "
                              "examples would share one; use packing false")
