"""LoRA adapters: one config class for every stage, and the one way they are put on a model."""
from __future__ import annotations

from dataclasses import dataclass, field

from rlhf.core.config import ConfigError


@dataclass
class LoraConfig:
    """LoRA adapters (peft). Stages differ only in their defaults (e.g. PPO has no dropout)."""

    enabled: bool = field(default=True, metadata={"help": "false: train every weight (stages that allow it)"})
    r: int = field(default=16, metadata={"help": "rank of the update", "range": "[1, 65536]"})
    alpha: int = field(default=32, metadata={"help": "scale = alpha / r", "range": "(0, inf)"})
    dropout: float = field(default=0.0, metadata={"help": "adapter dropout", "range": "[0, 1)"})
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "modules with adapters; [all-linear]: every linear one; []: peft's default for the model"})
    # Decoder layers that get adapters (empty: all); negative indices count from the top, so [-8, ..., -1] is
    # "the last 8 layers" on any depth (all of them on a model with fewer). Backprop stops at the lowest one.
    layers: list[int] = field(
        default_factory=list,
        metadata={"help": "decoder layers that get adapters (empty: all); negative indices count from the top"})


def resolve_layers(layers, num_layers: int) -> list[int]:
    """Layer indices, sorted; negatives count from the top and stop at the bottom layer, so "the last 8"
    ([-8, ..., -1]) means every layer of a model with fewer. A non-negative index past the top is an error."""
    bad = [i for i in layers if i >= num_layers]
    if bad:
        raise ConfigError(f"lora.layers: {list(layers)} names layers {bad} outside 0..{num_layers - 1} "
                         f"of this {num_layers}-layer model")
    return sorted({max(i + num_layers, 0) if i < 0 else i for i in layers})


def peft_lora_config(lora: LoraConfig, num_layers: int, task_type: str | None = "CAUSAL_LM"):
    """The peft ``LoraConfig`` for ``lora`` on a model of ``num_layers`` decoder layers."""
    from peft import LoraConfig as PeftLoraConfig

    # ["all-linear"] is peft's every-linear shorthand; [] leaves the choice to peft's default for the architecture.
    targets = "all-linear" if list(lora.target_modules) == ["all-linear"] else list(lora.target_modules) or None
    layers = resolve_layers(lora.layers, num_layers) if lora.layers else None
    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                          bias="none", task_type=task_type, layers_to_transform=layers)


def add_lora(model, lora: LoraConfig, task_type: str | None = "CAUSAL_LM"):
    """``model`` wrapped by peft with ``lora``'s adapters; adapters are float32 even on bf16 weights."""
    from peft import get_peft_model

    config = peft_lora_config(lora, model.config.num_hidden_layers, task_type)
    return get_peft_model(model, config, autocast_adapter_dtype=True)
