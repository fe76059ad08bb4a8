"""The HF Trainer (TRL's SFTTrainer) training a model sharded with FSDP2 (:mod:`rlhf.core.sharding`), on CPU and CUDA.

Why a Trainer subclass: on CPU accelerate ignores its FSDP plugin, so ``accelerator.prepare`` would wrap the
model in DDP. transformers 5.24 already has the path we need for a model that arrives sharded (its
``is_distributed_loading_by_transformers``): autocast only, no DDP wrap, gradient reduction left to FSDP (clipping
then runs on the DTensor gradients). It refuses to checkpoint such a model (it cannot save its optimizer), so this
subclass supplies the checkpoint: model and optimizer through torch.distributed.checkpoint (each rank its own
shard), scheduler, RNG and trainer state as usual. The final export gathers the weights into a plain copy and
writes the usual HF folder (full fine-tuning) or PEFT adapter (LoRA, prompt tuning).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from rlhf.core.checkpoints import SHARDED, check_same_launch
from rlhf.core.config import ConfigError
from rlhf.core.sharding import (check_wrappable, fsdp_requested, full_state_dict, is_sharded, load_sharded, no_sync,
                           save_sharded, shard, transformer_blocks)

SCHEDULER = "scheduler.pt"  # transformers' SCHEDULER_NAME: the name a checkpoint's scheduler always had


def check_fsdp(cfg) -> None:
    """Refuse, in one line before any model loads, an FSDP launch (``ACCELERATE_USE_FSDP``) of a stage config
    (``model.name``, ``model.quantization``) that cannot be sharded here."""
    if not fsdp_requested():
        return
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise ConfigError("ACCELERATE_USE_FSDP=true: sharding needs 2 or more processes "
                          "(torchrun --nproc_per_node N, or accelerate launch)")
    check_wrappable(cfg.model.name, "model.name", quantization=cfg.model.quantization,
                    quantization_key="model.quantization")


def check_resume(checkpoint: Path | None) -> None:
    """Refuse, before any model loads, to resume a checkpoint under another launch than the one that wrote it."""
    if checkpoint is not None:
        check_same_launch(checkpoint, fsdp_requested())


class ShardedTrainerMixin:
    """Put before a transformers ``Trainer`` class: the model is sharded once the trainer has built it (after
    TRL attached the LoRA adapter or soft prompt, so adapters are sharded with their layers) and is never
    DDP-wrapped."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        blocks = transformer_blocks(self.model)
        shard(self.model, blocks)
        if self.args.should_save:
            print(f"[sft] FSDP2: {len(blocks)} blocks and the root sharded over {self.args.world_size} processes",
                  file=sys.stderr)
        self.model_wrapped = self.model
        # transformers' path for a model that owns its sharding: prepare autocast only (no DDP), reduce the
        # gradients through FSDP, defer that reduction inside gradient accumulation.
        self.is_distributed_loading_by_transformers = True

    def _defer_fsdp_gradient_reduction(self):
        """Gradient accumulation: keep each micro-batch's gradients local and reduce-scatter once, after the last.
        (transformers' own version reads a ``config.distributed_config`` only its load-time sharding sets.)"""
        return no_sync(self.model)

    # ------------------------------------------------------------ checkpoints (every rank takes part)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """A checkpoint's model goes with its optimizer (:meth:`_save_optimizer_and_scheduler`); the final
        export is gathered on every rank and written by the main process (plain HF folder or PEFT adapter)."""
        if _internal_call:
            return
        output_dir = output_dir or self.args.output_dir
        # Saved from a plain copy: PEFT runs a soft prompt's encoder to save it, which sharded weights cannot do alone.
        plain = local_model(self.model)  # a collective: every rank gathers
        if self.args.should_save:
            plain.save_pretrained(output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)

    def _frozen_weights(self) -> bool:
        """LoRA or a soft prompt: the frozen base comes back from the model files, the checkpoint skips it."""
        return any(not p.requires_grad for p in self.model.parameters())

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        save_sharded(Path(output_dir) / SHARDED, self.model, self.optimizer, trainable_only=self._frozen_weights())
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Nothing yet: the optimizer does not exist when the Trainer calls this; the model is read with it."""

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        load_sharded(Path(checkpoint) / SHARDED, self.model, self.optimizer, trainable_only=self._frozen_weights())
        self.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, SCHEDULER), weights_only=True))


def local_model(model: nn.Module) -> nn.Module | None:
    """A model this process can run alone: ``model`` itself, or for a sharded one a plain (unsharded) copy with
    its gathered weights, on the main process only (None on the others; a collective, every rank calls it).

    Why a copy and not :func:`rlhf.core.sharding.gathered`: ``generate`` on an FSDP-managed module syncs every step
    with the other ranks (transformers' ``synced_gpus``), so rank 0 generating alone would wait forever."""
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    if not is_sharded(model):
        return model
    state = full_state_dict(model)
    if dist.get_rank() != 0:
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    copy = AutoModelForCausalLM.from_config(base.config, dtype=base.dtype)
    if hasattr(model, "peft_config"):
        from peft import get_peft_model

        copy = get_peft_model(copy, model.peft_config[model.active_adapter])
    copy.load_state_dict(state, strict=True)
    copy.generation_config = base.generation_config
    return copy.train(model.training)


def sharded(trainer_class: type) -> type:
    """``trainer_class`` training an FSDP2-sharded model (see :class:`ShardedTrainerMixin`)."""
    return type(f"Sharded{trainer_class.__name__}", (ShardedTrainerMixin, trainer_class), {})


