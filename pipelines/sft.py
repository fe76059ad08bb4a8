"""Stage 1: supervised fine-tuning (full, LoRA or prompt tuning) on a weighted chat mixture, loss on assistant
tokens only.

    python pipelines/sft.py --train.max_steps 100                  # the defaults: SFTStageConfig()
    rlhf sft --lora.r 8 --data.mixture '[{source: dialogsum}, {source: hh-rlhf-harmless, weight: 0.5}]'
    rlhf sft --model.quantization 4bit                               # QLoRA: LoRA on a 4-bit NF4 base (bitsandbytes)
    rlhf sft --lora.enabled false --prompt_tuning.enabled true --prompt_tuning.num_virtual_tokens 50  # soft prompt
    torchrun --nproc_per_node 2 pipelines/sft.py --config pipelines/configs/sft_tiny.yaml   # DDP (gloo on CPU)
    ACCELERATE_USE_FSDP=true torchrun --nproc_per_node 2 pipelines/sft.py ...                # FSDP2 (rlhf.sft.fsdp)
    rlhf sft --run.run_name my-run --resume                                                  # continue a run

Writes ``<run_dir>/final/`` (PEFT adapter or full model, plus tokenizer), optionally
``<run_dir>/final-merged/``, checkpoints under ``<run_dir>/checkpoints/``, metrics and ``summary.json``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from rlhf.core.lifecycle import start_run
from rlhf.data.validation import validate_stage_inputs
from rlhf.sft.config import SFTStageConfig
from rlhf.sft.data import dev_records, encode_records, to_dataset, training_mixture
from rlhf.sft.forgetting import truthfulqa_mc1
from rlhf.models.quantization import check_backend
from rlhf.core.runtime import use_bf16
from rlhf.sft.fsdp import check_fsdp, check_resume, local_model
from rlhf.sft.trainer import (PREFIX, MetricsLoggerCallback, build_trainer, checkpoint_step,
                              perplexity, planned_steps, ranks_in_sync, restore_counters, save_final)
from rlhf.core.tracking import MetricsLogger, is_main_process, logged_value

DEFAULTS = None  # the dataclass defaults are the stage's defaults; presets are --config files


def main(cfg: SFTStageConfig, resume: bool | str = False) -> Path:
    from rlhf.models.generation import generate_chat
    from rlhf.models.policies import load_tokenizer, load_weights

    # 1. inputs checked (a bad file is one line, before any model loads or run folder exists); processes, run
    #    folder (rank 0 decides, every rank agrees; a used name without --resume: one line), seed, precision
    validate_stage_inputs("sft", cfg)
    check_backend(cfg.model.quantization)
    check_fsdp(cfg)
    run = start_run(cfg.run, "sft", resume, PREFIX)
    run_dir, checkpoint = run.dir, run.checkpoint
    check_resume(checkpoint)
    bf16 = use_bf16(cfg.train.precision, run.device)
    main_rank = is_main_process()

    # 2. base model and tokenizer (fp32 master weights unless told otherwise; frozen and quantized for QLoRA)
    tokenizer = load_tokenizer(cfg.model.name)
    dtype = getattr(torch, cfg.model.dtype)
    model = load_weights(cfg.model.name, dtype, quantization=cfg.model.quantization)

    # 3. data: the weighted training mixture and the dev split, tokenized with the assistant-only mask
    train = training_mixture(cfg.data, cfg.run.seed)
    dev = dev_records(cfg.data, cfg.run.seed)
    train_encoded, train_dropped = encode_records(tokenizer, train, cfg.train.max_length)
    dev_encoded, dev_dropped = encode_records(tokenizer, dev, cfg.train.max_length)
    if not train_encoded:
        raise ValueError(f"no training example fits train.max_length={cfg.train.max_length}")

    # 4. one logger for the stage
    world_size = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    logger = MetricsLogger(run_dir, cfg.run, "sft", config=cfg,
                           total_steps=planned_steps(len(train_encoded), cfg, world_size))
    if checkpoint is not None:  # the steps after the checkpoint are redone: their old records go
        logger.resumed_at(checkpoint_step(checkpoint))
    logger.log({"data/train_examples": len(train_encoded), "data/dev_examples": len(dev_encoded),
                "data/dropped_too_long": train_dropped + dev_dropped, "train/bf16_autocast": int(bf16)}, step=0)

    # 5. forgetting check, part 1: the base model on a task it is not trained on
    forgetting = {}
    if cfg.forgetting.enabled and any(s.source == "truthfulqa" for s in cfg.data.mixture) and main_rank:
        print("[sft] warning: the forgetting check's task (TruthfulQA) is in the training mixture; it measures "
              "transfer, not forgetting (its test split is still held out)", file=sys.stderr)
    if cfg.forgetting.enabled and main_rank:
        forgetting["forgetting/base_acc"] = truthfulqa_mc1(model, tokenizer, cfg.forgetting.n,
                                                           cfg.forgetting.batch_size, autocast=bf16)

    # 6. trainer (LoRA or the soft prompt attached here)
    tracker = MetricsLoggerCallback(logger)
    trainer = build_trainer(cfg, model, tokenizer, to_dataset(train_encoded),
                            to_dataset(dev_encoded) if dev_encoded else None, run_dir, tracker, bf16,
                            eval_on_start=checkpoint is None)

    # 7. train: first the base model's eval loss (step 0), then the updates; a resumed run restores
    #    optimizer, scheduler, RNG and data position from the checkpoint
    restore_counters(trainer, checkpoint)  # train/num_tokens continues where the checkpoint left it
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    loss_before = tracker.eval_losses.get(0, logged_value(run_dir, "eval/loss", step=0))  # a resumed run: logged
    if loss_before is not None:
        logger.summary({"eval/loss_before": loss_before, "eval/perplexity_before": perplexity(loss_before)})
    step = trainer.state.global_step
    summary = {"train/steps": step, "data/train_examples": len(train_encoded)}
    if dev_encoded:
        after = trainer.evaluate()
        summary.update({"eval/loss_after": after["eval_loss"], "eval/perplexity_after": perplexity(after["eval_loss"])})
    summary["dist/world_size"], summary["dist/ranks_in_sync"] = ranks_in_sync(trainer.model)

    # 8. main rank: sample generations, forgetting check part 2, final artifacts, summary (a sharded model is
    #    gathered into a plain copy on rank 0 first, so rank 0's forward calls need no other rank)
    policy = local_model(trainer.accelerator.unwrap_model(trainer.model))
    if main_rank:
        samples = [dev[i * len(dev) // cfg.data.samples] for i in range(min(cfg.data.samples, len(dev)))]
        responses = generate_chat(policy, tokenizer, [r.prompt_messages for r in samples], cfg.generation)
        logger.log_table("samples", ["source", "prompt", "reference", "response"],
                         [[r.source, r.prompt_messages[-1]["content"], r.messages[-1]["content"], out]
                          for r, out in zip(samples, responses)], step=step)
        if cfg.forgetting.enabled:
            forgetting["forgetting/sft_acc"] = truthfulqa_mc1(policy, tokenizer, cfg.forgetting.n,
                                                              cfg.forgetting.batch_size, autocast=bf16)
            forgetting["forgetting/delta"] = forgetting["forgetting/sft_acc"] - forgetting["forgetting/base_acc"]
            logger.log(forgetting, step=step)
    paths = save_final(trainer, tokenizer, run_dir, cfg.train.save_merged)
    logger.log_artifact(paths["final"], "model", inputs=[cfg.model.name])
    logger.summary({**summary, **forgetting, **{f"paths/{k}": v for k, v in paths.items()}})
    logger.finish()
    return run_dir


if __name__ == "__main__":  # the same as `rlhf sft ...` (rlhf.stages holds the command)
    from rlhf.stages import STAGES

    sys.exit(STAGES["sft"].cli(sys.argv[1:]))
