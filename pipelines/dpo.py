"""Stage 3, offline: DPO (IPO, ... through ``train.loss_type``) on preference pairs, TRL's DPOTrainer, LoRA on SFT.

    rlhf dpo --model.name runs/demo/sft/final --data.dimensions '[harmless]' --train.max_steps 40
    rlhf dpo --train.loss_type ipo --train.beta 0.5                # IPO
    python pipelines/dpo.py --config my_dpo.yaml
    rlhf dpo --run.run_name my-run --resume                         # continue a run from its last checkpoint

The reference is the SFT policy itself (the same weights, adapters off). Writes ``<run_dir>/final/adapter``
(PEFT, based on the SFT policy) and, by default, SFT + DPO merged in ``<run_dir>/final/``, as the RL stage
does: ``rlhf eval`` takes ``{name: dpo, model: <run_dir>/final/adapter}`` and measures KL to SFT. Checkpoints
under ``<run_dir>/checkpoints/``, metrics (``loss/dpo``, ``reward/margin``, ``reward/accuracy`` ...) and
``summary.json``.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and __package__ is None:  # `python pipelines/dpo.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from rlhf.core.config import ConfigError  # noqa: E402
from rlhf.dpo.config import DPOStageConfig  # noqa: E402

DEFAULTS = None  # the dataclass defaults are the stage's defaults; presets are --config files
STAGE = "dpo"


def main(cfg: DPOStageConfig, resume: bool | str = False) -> Path:
    from rlhf.data.validation import validate_stage_inputs
    from rlhf.dpo.data import load_pairs, to_dataset
    from rlhf.dpo.trainer import RENAMES, build_trainer, save_final
    from rlhf.core.lifecycle import start_run
    from rlhf.models.policies import load_weights
    from rlhf.rl.policy import load_policy_tokenizer
    from rlhf.core.runtime import use_bf16
    from rlhf.sft.trainer import PREFIX, MetricsLoggerCallback, checkpoint_step, planned_steps, restore_counters
    from rlhf.core.tracking import MetricsLogger

    # 1. inputs checked and the pairs read (a bad file, or none left after the dimension filter, is one line,
    #    exit 2, before any model loads or a run folder exists); processes, the run folder, seed; precision
    if not cfg.lora.enabled:  # without adapters there is no adapters-off reference (TRL would load the base)
        raise ConfigError("lora.enabled: DPO here trains LoRA on the SFT policy (the reference is the adapters-off "
                          "model); full fine-tuning is not supported")
    validate_stage_inputs(STAGE, cfg)
    pairs = load_pairs(cfg.data, cfg.run.seed)
    # the processes are started here, before TRL's trainer exists: the ranks must agree on the folder first
    run = start_run(cfg.run, STAGE, resume, PREFIX)
    run_dir, checkpoint = run.dir, run.checkpoint
    bf16 = use_bf16(cfg.train.precision, run.device)  # rlhf.core.runtime decides device and precision

    # 2. the pairs in TRL's conversational format; pairs longer than train.max_length are dropped, never cut
    tokenizer = load_policy_tokenizer(cfg.model)
    train, train_dropped = to_dataset(tokenizer, pairs.train, cfg.train.max_length)
    dev, dev_dropped = to_dataset(tokenizer, pairs.dev, cfg.train.max_length)
    if len(train) == 0:
        raise ConfigError(f"train.max_length: none of the {len(pairs.train)} training pairs fits "
                          f"{cfg.train.max_length} tokens")

    # 3. one logger for the stage
    logger = MetricsLogger(run_dir, cfg.run, STAGE, config=cfg,
                           total_steps=planned_steps(len(train), cfg))  # type: ignore[arg-type]
    if checkpoint is not None:  # the steps after the checkpoint are redone: their old records go
        logger.resumed_at(checkpoint_step(checkpoint))
    logger.log({"data/train_pairs": len(train), "data/dev_pairs": len(dev),
                "data/dropped_too_long": train_dropped + dev_dropped, "train/bf16_autocast": int(bf16)}, step=0)

    # 4. the SFT policy as one plain model (an SFT adapter merged in); the trainer puts DPO's LoRA on it and
    #    uses the same weights with adapters off as the reference
    model = load_weights(cfg.model.name, torch.float32, adapter=cfg.model.sft_adapter)
    tracker = MetricsLoggerCallback(logger, renames=RENAMES)
    trainer = build_trainer(cfg, model, tokenizer, train, dev if len(dev) else None, run_dir, tracker, bf16,
                            eval_on_start=checkpoint is None)

    # 5. train: first the dev loss with policy == reference (step 0: log 2 for DPO), then the updates; a resumed
    #    run restores optimizer, scheduler, RNG and data position from the checkpoint
    restore_counters(trainer, checkpoint)  # train/num_tokens continues where the checkpoint left it
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    summary = {"train/steps": trainer.state.global_step, "data/train_pairs": len(train)}
    if 0 in tracker.eval_losses:
        summary["eval/loss/dpo_before"] = tracker.eval_losses[0]
    if len(dev):
        after = trainer.evaluate()
        summary.update({"eval/loss/dpo_after": after["eval_loss"],
                        "eval/reward/accuracy_after": after.get("eval_rewards/accuracies"),
                        "eval/reward/margin_after": after.get("eval_rewards/margins")})

    # 6. final/: the adapter (base = the SFT policy) and the merged weights; summary
    paths = save_final(trainer, tokenizer, cfg, run_dir)
    logger.summary({**{k: v for k, v in summary.items() if v is not None},
                    **{f"paths/{k}": v for k, v in paths.items()}})
    logger.finish()
    return run_dir


if __name__ == "__main__":  # the same as `rlhf dpo ...` (rlhf.stages holds the command)
    from rlhf.stages import STAGES

    sys.exit(STAGES["dpo"].cli(sys.argv[1:]))
