"""TRL ``DPOTrainer`` set up from a :class:`DPOStageConfig`: LoRA on the SFT policy, reference = adapters off.

Nothing of DPO is written here: TRL computes the loss, the implicit rewards and their accuracy. This module
maps our config onto ``DPOConfig``, renames TRL's logs into our namespaces (``loss/dpo``, ``reward/margin``
...) and saves ``final/`` the way the RL stage does, so ``rlhf eval`` loads either the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from transformers import TrainerCallback

from rlhf.dpo.config import DPOStageConfig
from rlhf.models.lora import peft_lora_config
from rlhf.rl.checkpoint import point_adapter_at_sft, sft_start
from rlhf.sft.trainer import CheckpointManifest, MetricsLoggerCallback, common_training_args
from rlhf.core.runtime import fresh_accelerator_state
from rlhf.core.threads import ThreadGovernor

# TRL's DPO log keys -> ours; the rest land under train/ or eval/ (rlhf.sft.trainer.hf_logs_to_metrics).
RENAMES = {
    "loss": "loss/dpo", "train_loss": "loss/dpo_mean", "learning_rate": "train/lr",
    "rewards/chosen": "reward/chosen", "rewards/rejected": "reward/rejected",
    "rewards/margins": "reward/margin", "rewards/accuracies": "reward/accuracy",
    "logps/chosen": "logps/chosen", "logps/rejected": "logps/rejected",
    "train_runtime": "train/runtime_s",
    "eval_loss": "eval/loss/dpo", "eval_rewards/chosen": "eval/reward/chosen",
    "eval_rewards/rejected": "eval/reward/rejected", "eval_rewards/margins": "eval/reward/margin",
    "eval_rewards/accuracies": "eval/reward/accuracy", "eval_runtime": "eval/runtime_s",
}


class GovernThreads(TrainerCallback):
    """The shared CPU's thread rule (:class:`rlhf.core.threads.ThreadGovernor`), re-checked before every step."""

    def __init__(self, threads: int):
        self.governor = ThreadGovernor(threads)

    def on_step_begin(self, args, state, control, **kwargs):
        self.governor.before_step()


def training_args(cfg: DPOStageConfig, run_dir: Path, bf16: bool, eval_on_start: bool = False):
    """TRL's DPOConfig from ours. TRL's defaults that are wrong for a CPU run (bf16 and gradient checkpointing
    on) are set explicitly; ``max_length`` is ours too, and longer pairs never reach TRL (rlhf.dpo.data)."""
    from trl import DPOConfig

    t = cfg.train
    return DPOConfig(**common_training_args(t, cfg.run, run_dir, bf16, eval_on_start),
                     beta=t.beta, loss_type=[t.loss_type], label_smoothing=t.label_smoothing)


def build_trainer(cfg: DPOStageConfig, model, tokenizer, train_dataset, eval_dataset, run_dir: Path,
                  tracker: MetricsLoggerCallback, bf16: bool, eval_on_start: bool = False,
                  callbacks: Sequence[TrainerCallback] = ()):
    """A TRL DPOTrainer on the SFT model: ``peft_config`` puts our LoRA on it and ``ref_model=None`` makes
    the reference the same weights with the adapters disabled (TRL's PEFT path: no second model in memory)."""
    import datasets
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOTrainer

    datasets.disable_progress_bars()  # TRL's tokenizing maps would print a bar per pass
    args = training_args(cfg, run_dir, bf16, eval_on_start=eval_on_start and eval_dataset is not None)
    fresh_accelerator_state()  # the trainer's accelerator takes args' precision, not an earlier stage's
    manifest = CheckpointManifest(cfg.train.save_total_limit, adapter_base=sft_start(cfg.model))
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=tokenizer,
                         peft_config=peft_lora_config(cfg.lora, model.config.num_hidden_layers),
                         callbacks=[tracker, manifest, GovernThreads(cfg.train.threads), *callbacks])
    manifest.trainer = trainer
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; our logger already shows them
    return trainer


def save_final(trainer, tokenizer, cfg: DPOStageConfig, run_dir: Path) -> dict[str, str]:
    """``final/adapter`` (PEFT LoRA whose base is the SFT policy) and, with ``train.save_merged``, SFT + DPO
    merged as a plain HF folder in ``final/``, plus the tokenizer: the RL stage's layout, so ``rlhf eval``
    loads ``{path: <run>/final/adapter}`` with the SFT policy as its KL reference, or ``<run>/final`` as full
    weights. Merging consumes the adapter: call this last."""
    final = run_dir / "final"
    paths = {"final": str(final), "adapter": str(final / "adapter")}
    if not trainer.is_world_process_zero():
        return paths
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.save_pretrained(paths["adapter"])
    # The merged SFT weights in memory carry the base model's name; the adapter was trained on the SFT policy,
    # named as the RL stage names it (a merged final/sft-base when the SFT was an adapter), portably.
    point_adapter_at_sft(Path(paths["adapter"]), cfg.model, tokenizer)
    tokenizer.save_pretrained(paths["adapter"])  # the adapter folder loads on its own (AutoTokenizer, rlhf chat)
    if cfg.train.save_merged:
        model.merge_and_unload().save_pretrained(final)
    tokenizer.save_pretrained(final)
    return paths
