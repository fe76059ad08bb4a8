"""TRL ``SFTTrainer`` set up from an :class:`SFTStageConfig`: precision, LoRA or prompt tuning, checkpoints, our logger.

HF Trainer's own reporting is off (``report_to="none"``) unless ``run.report_to`` names its integrations
(TRL's ``report_to``: tensorboard, trackio, wandb ...; used by SFT and DPO); its logs are renamed into our
namespaces and sent through :class:`rlhf.core.tracking.MetricsLogger` by :class:`MetricsLoggerCallback`, so there is
one logger and one W&B run.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from transformers import TrainerCallback

from rlhf.core import checkpoints
from rlhf.core.config import RunConfig
from rlhf.models.lora import LoraConfig, peft_lora_config
from rlhf.models.policies import is_adapter_folder, make_base_portable, set_adapter_base
from rlhf.core.runtime import fresh_accelerator_state
from rlhf.sft.config import PromptTuningConfig, SFTStageConfig
from rlhf.core.tracking import MetricsLogger

CHECKPOINTS = checkpoints.CHECKPOINTS
PREFIX = "checkpoint-"  # HF Trainer's folder names: checkpoint-<global step>


# ---------------------------------------------------------------- precision


def train_device(run) -> torch.device:
    """Where the Trainer trains (``rlhf.core.runtime.select_device`` of ``run.device``); ``rlhf.core.runtime.use_bf16``
    decides bf16 autocast for it. (On an AVX2-only EPYC a bf16-autocast SmolLM2 training step measured more
    than 2x slower than fp32.)"""
    from rlhf.core.runtime import select_device

    return select_device(run.device)


# ---------------------------------------------------------------- LoRA and prompt tuning


def peft_config(lora: LoraConfig, num_layers: int):
    """A peft ``LoraConfig`` for a causal LM of ``num_layers`` decoder layers, or None for full fine-tuning."""
    return peft_lora_config(lora, num_layers) if lora.enabled else None


def prompt_tuning_config(pt: PromptTuningConfig, model_name: str):
    """A peft ``PromptTuningConfig``: ``pt.num_virtual_tokens`` virtual tokens, from ``pt.init_text`` or random."""
    from peft import PromptTuningConfig as PeftPromptTuningConfig, PromptTuningInit

    from rlhf.models.zoo import resolve_model

    if not pt.init_text:
        return PeftPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=pt.num_virtual_tokens,
                                      prompt_tuning_init=PromptTuningInit.RANDOM)
    # peft tokenizes the init text itself, so it needs a loadable tokenizer path (zoo names resolved here)
    return PeftPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=pt.num_virtual_tokens,
                                  prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=pt.init_text,
                                  tokenizer_name_or_path=resolve_model(model_name))


def stage_peft_config(cfg: SFTStageConfig, num_layers: int):
    """The adapter the stage trains (LoRA or a soft prompt), or None for full fine-tuning."""
    if cfg.prompt_tuning.enabled:
        return prompt_tuning_config(cfg.prompt_tuning, cfg.model.name)
    return peft_config(cfg.lora, num_layers)


# ---------------------------------------------------------------- logging


_RENAMES = {"loss": "loss/train", "train_loss": "loss/train_mean", "eval_loss": "eval/loss",
            "learning_rate": "train/lr", "mean_token_accuracy": "train/token_accuracy",
            "eval_mean_token_accuracy": "eval/token_accuracy", "train_runtime": "train/runtime_s",
            "eval_runtime": "eval/runtime_s"}
_DROPPED = {"total_flos", "step", "eval_model_preparation_time", "eval_num_tokens"}


def perplexity(loss: float) -> float:
    """exp(mean token NLL), capped at exp(50) so a diverged run logs a number, not an overflow."""
    return math.exp(min(loss, 50.0))


def hf_logs_to_metrics(logs: Mapping[str, Any], renames: Mapping[str, str] | None = None) -> dict[str, Any]:
    """HF Trainer log keys -> our namespaced keys (``loss`` -> ``loss/train``, ``eval_loss`` -> ``eval/loss``,
    plus ``eval/perplexity``); anything else goes under ``train/`` or ``eval/``. ``renames`` (another stage's,
    e.g. DPO's) replaces SFT's table."""
    renames = _RENAMES if renames is None else renames
    out: dict[str, Any] = {}
    for key, value in logs.items():
        if key in _DROPPED or not isinstance(value, (int, float)):
            continue
        if key in renames:
            out[renames[key]] = value
        elif key.startswith("eval_"):
            out["eval/" + key[len("eval_"):]] = value
        else:
            out["train/" + key] = value
    if "eval/loss" in out:
        out["eval/perplexity"] = perplexity(out["eval/loss"])
    return out


class MetricsLoggerCallback(TrainerCallback):
    """Route the Trainer's logs into our MetricsLogger at the optimisation step they belong to, and keep
    every eval loss by step (``eval_losses[0]`` is the base model's, from ``eval_on_start``)."""

    def __init__(self, logger: MetricsLogger, renames: Mapping[str, str] | None = None):
        self.logger = logger
        self.renames = renames
        self.eval_losses: dict[int, float] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        metrics = hf_logs_to_metrics(logs or {}, self.renames)
        if metrics:
            self.logger.log(metrics, step=state.global_step)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_loss" in metrics:
            self.eval_losses[state.global_step] = metrics["eval_loss"]


# ---------------------------------------------------------------- run folders and resuming


COUNTERS = "counters.json"  # in a checkpoint-N: TRL's running totals, which its own checkpoint does not keep


class CheckpointManifest(TrainerCallback):
    """Completes each ``checkpoint-N`` the HF Trainer wrote in place: its manifest (sizes, sha256) is
    written after every file, so a folder without one was cut short (see :mod:`rlhf.core.checkpoints`); then the
    older checkpoints beyond ``keep`` are deleted. The HF Trainer's own rotation (``save_total_limit``) is off:
    it deletes the older checkpoints *before* this callback runs, so a run killed while the new one is hashed
    kept no intact checkpoint at all.

    ``on_save`` runs once ``_save_checkpoint`` has written model, optimizer, scheduler, RNG and trainer
    state; under DDP every rank first waits there, since each writes its own RNG file. ``trainer`` (set once
    the trainer exists): its running token count goes into the checkpoint, read back by :func:`restore_counters`."""

    def __init__(self, keep: int = 0, adapter_base: str = ""):
        self.keep = keep
        self.adapter_base = adapter_base  # what a checkpoint's adapter goes on ("": the base peft wrote)
        self.trainer = None

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_world_process_zero:
            root = Path(args.output_dir)
            folder = root / f"{PREFIX}{state.global_step}"
            if self.trainer is not None:
                counters = {"num_tokens": getattr(self.trainer, "_total_train_tokens", 0)}
                (folder / COUNTERS).write_text(json.dumps(counters), encoding="utf-8")
            if is_adapter_folder(folder) and self.adapter_base:  # named portably before the manifest hashes it
                set_adapter_base(folder, self.adapter_base)
            elif is_adapter_folder(folder):
                make_base_portable(folder)
            checkpoints.write_manifest(folder)
            # HF's rotation keeps the newest by mtime, so after a resume it may leave abandoned later folders.
            checkpoints.drop_newer(root, PREFIX, state.global_step)
            checkpoints.rotate(root, PREFIX, self.keep)


def restore_counters(trainer, checkpoint: Path | None) -> None:
    """Continue TRL's ``train/num_tokens`` from the checkpoint's count (TRL starts it at 0 in every process, so a
    resumed run's curve would restart); a checkpoint from before counters were saved leaves it at 0."""
    path = None if checkpoint is None else Path(checkpoint) / COUNTERS
    if path is not None and path.is_file():
        trainer._total_train_tokens = json.loads(path.read_text(encoding="utf-8"))["num_tokens"]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact ``checkpoint-N`` under ``<run_dir>/checkpoints`` (manifest verified); one line for
    each newer one skipped."""
    return checkpoints.newest_intact(run_dir / CHECKPOINTS, PREFIX)


def checkpoint_step(checkpoint: Path) -> int:
    """The global step a ``checkpoint-N`` folder holds."""
    return int(checkpoint.name.removeprefix(PREFIX))


# ---------------------------------------------------------------- the trainer


def training_args(cfg: SFTStageConfig, run_dir: Path, bf16: bool, eval_on_start: bool = False):
    """TRL's SFTConfig from ours. Several TRL defaults differ from HF's and are set explicitly here:
    TRL turns bf16 and gradient checkpointing on by default, both wrong for a CPU run.

    The base model's eval loss comes from ``eval_on_start`` inside ``train()``, never from an
    ``evaluate()`` call before it: accelerate marks a model prepared for evaluation as prepared, and
    ``train()`` then skips the DDP wrap, so under torchrun every rank would silently train alone."""
    from trl import SFTConfig

    t = cfg.train
    return SFTConfig(**common_training_args(t, cfg.run, run_dir, bf16, eval_on_start),
                     packing=t.packing, eval_packing=False, remove_unused_columns=True)


ONLY_AT_THE_END = 10**9  # save_steps past any run: HF's "steps" strategy still saves at the last step


def common_training_args(t, run, run_dir: Path, bf16: bool, eval_on_start: bool) -> dict:
    """The TrainingArguments our TRL-backed stages (SFT, DPO) share, from a train section ``t`` with the
    same keys (epochs, max_steps, learning_rate ... save_total_limit) and the run section."""
    return dict(
        output_dir=str(run_dir / CHECKPOINTS),
        # our "off" values (max_steps 0: by epochs; save_steps 0: only the save at the end) in TRL's terms
        num_train_epochs=t.epochs, max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        bf16=bf16, fp16=False, use_cpu=train_device(run).type == "cpu",  # multi-process on CPU: accelerate picks gloo
        gradient_checkpointing=t.gradient_checkpointing,
        max_length=t.max_length,
        eval_strategy="steps" if t.eval_steps > 0 else "no", eval_steps=t.eval_steps or None,
        eval_on_start=eval_on_start,
        # rotation is CheckpointManifest's, after the new manifest (HF's deletes before it: see there)
        save_strategy="steps", save_steps=t.save_steps or ONLY_AT_THE_END, save_total_limit=None,
        logging_steps=run.log_every, logging_first_step=True,
        seed=run.seed, data_seed=run.seed,
        # our MetricsLogger shows progress and is the tracker; run.report_to adds the Trainer's own integrations
        report_to=list(run.report_to) or "none", disable_tqdm=True,
        dataloader_num_workers=0,
    )


def build_trainer(cfg: SFTStageConfig, model, tokenizer, train_dataset, eval_dataset, run_dir: Path,
                  tracker: MetricsLoggerCallback, bf16: bool, eval_on_start: bool = False,
                  callbacks: Sequence[TrainerCallback] = ()):
    """A TRL SFTTrainer on pre-tokenized data (``input_ids`` + ``assistant_masks`` -> labels)."""
    import datasets
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    from rlhf.core.sharding import fsdp_requested
    from rlhf.sft.fsdp import sharded

    datasets.disable_progress_bars()  # TRL's label-building maps would print a bar per pass
    args = training_args(cfg, run_dir, bf16, eval_on_start=eval_on_start and eval_dataset is not None)
    fresh_accelerator_state()  # the trainer's accelerator takes args' precision, not an earlier stage's
    trainer_class = sharded(SFTTrainer) if fsdp_requested() else SFTTrainer
    manifest = CheckpointManifest(cfg.train.save_total_limit)
    trainer = trainer_class(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, peft_config=stage_peft_config(cfg, model.config.num_hidden_layers),
                         callbacks=[tracker, manifest, *callbacks])
    manifest.trainer = trainer
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; our logger already shows them
    return trainer


def planned_steps(n_examples: int, cfg: SFTStageConfig, world_size: int = 1) -> int:
    """Optimisation steps the run will take (sizes the progress bar only)."""
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    batches = math.ceil(n_examples / (cfg.train.batch_size * world_size))
    return max(1, math.ceil(cfg.train.epochs * max(1, batches // cfg.train.grad_accum)))


# ---------------------------------------------------------------- artifacts


def save_final(trainer, tokenizer, run_dir: Path, save_merged: bool) -> dict[str, str]:
    """``final/``: the adapter (LoRA or soft prompt, standard PEFT format) or the full model, plus the tokenizer.
    ``final-merged/``: base + adapter merged into plain weights, when asked (LoRA only)."""
    from peft import PeftModel

    from rlhf.models.policies import merged_as_trained
    from rlhf.core.sharding import is_sharded

    paths = {"final": str(run_dir / "final")}
    trainer.save_model(paths["final"])
    if not trainer.is_world_process_zero():
        return paths
    tokenizer.save_pretrained(paths["final"])
    if is_adapter_folder(paths["final"]):  # peft wrote the base's local folder: a zoo name or relative path instead
        make_base_portable(paths["final"])
    model = trainer.accelerator.unwrap_model(trainer.model)
    if save_merged and isinstance(model, PeftModel):
        paths["final_merged"] = str(run_dir / "final-merged")
        if is_sharded(model):  # rank 0 holds shards only: fold the saved adapter into a freshly loaded base
            merged = merged_as_trained(paths["final"], model.get_base_model().dtype)
        else:  # merge_and_unload folds the adapter into the base weights in place: done last, on the live model.
            merged = model.merge_and_unload()
        merged.save_pretrained(paths["final_merged"])
        tokenizer.save_pretrained(paths["final_merged"])
    return paths


def weights_digest(model) -> str:
    """sha256 of the trainable weights: equal digests = bit-identical replicas. A sharded model's weights are
    gathered first (a collective), so its ranks compare the whole weights they would export."""
    from rlhf.core.sharding import full_state_dict, is_sharded

    if is_sharded(model):
        params = full_state_dict(model, trainable_only=True)
    else:
        params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    digest = hashlib.sha256()
    for name, param in sorted(params.items()):
        digest.update(name.encode())
        digest.update(param.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def ranks_in_sync(model) -> tuple[int, bool]:
    """(world size, whether every rank holds bit-identical trainable weights). A collective: call on all ranks."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1, True
    digests: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, weights_digest(model))
    return len(digests), len(set(digests)) == 1
