"""Stage 3: online RL (PPO, GRPO, RLOO, REINFORCE++) with a KL penalty on a LoRA policy against the HHH reward model.

    python pipelines/ppo.py --train.max_steps 50                   # PPO (the defaults)
    rlhf rl --algo grpo --rl.samples_per_prompt 4              # = --rl.algo grpo
    accelerate launch --config_file pipelines/accelerate/ddp.yaml pipelines/ppo.py ...
    torchrun --nproc_per_node 2 pipelines/ppo.py ...          # CPU, gloo
    rlhf ppo ... --resume                                      # continue the run named by run.run_name
"""
from __future__ import annotations

import sys
from pathlib import Path

from rlhf.rl.config import RLStageConfig

DEFAULTS = None  # the dataclass defaults are the stage's defaults; presets are --config files


def eval_summary(run_dir: Path) -> dict[str, float]:
    """Held-out reward and KL before training and at the end (the eval/ records of the whole run)."""
    from rlhf.core.tracking import run_history

    evals = run_history(run_dir, "eval/reward/composite")
    if len(evals) < 2:
        return {}
    first, last = evals[0], evals[-1]
    return {"eval/reward/composite_before": first["eval/reward/composite"],
            "eval/reward/composite_after": last["eval/reward/composite"],
            "eval/objective/kl_after": last["eval/objective/kl"]}


def main(cfg: RLStageConfig, resume: bool | str = False) -> Path:
    from rlhf.data.validation import validate_stage_inputs
    from rlhf.core.lifecycle import start_run
    from rlhf.rl import checkpoint as ckpt
    from rlhf.rl.curves import plot_reward_and_kl
    from rlhf.rl.factory import build_rl_trainer
    from rlhf.rl.prompts import held_out_prompts
    from rlhf.rl.scorers import check_reward_model
    from rlhf.models.quantization import check_backend
    from rlhf.core.runtime import make_accelerator
    from rlhf.core.sharding import check_wrappable
    from rlhf.core.tracking import MetricsLogger, run_history

    # 1. inputs checked (a bad file: one line, exit 2, before any model or run folder); processes, seed, run folder
    validate_stage_inputs("ppo", cfg)
    check_backend(cfg.model.quantization, "model.quantization")  # QLoRA without bitsandbytes: one line
    check_reward_model(cfg.reward, cfg.run.output_dir)  # ensemble members too; a gold judge is never trained against
    check_wrappable(cfg.model.name, "model.name", quantization=cfg.model.quantization,  # an FSDP launch of a
                    quantization_key="model.quantization")  # model it cannot shard (or a QLoRA base): one line
    # standalone runs are named after the algorithm (runs/grpo-<time>); rank 0 decides for every rank
    run = start_run(cfg.run, cfg.rl.algo, resume, ckpt.PREFIX)
    run_dir, checkpoint = run.dir, run.checkpoint
    accelerator = make_accelerator(run.device)  # rlhf.core.runtime: CUDA when present, else CPU
    logger = MetricsLogger(run_dir, cfg.run, cfg.rl.algo, config=cfg, total_steps=cfg.train.max_steps,
                           enabled=accelerator.is_main_process)

    # 2. the trainer from the config (rlhf.rl.factory): policy = SFT start + LoRA (+ value head for PPO), the
    #    reference = the same weights with adapters off, the scorer (trained HHH reward model, an ensemble, or the
    #    toy), the training prompts (chat prompts that fit data.max_prompt_tokens)
    trainer = build_rl_trainer(cfg, accelerator, logger=logger, run_dir=run_dir)
    eval_prompts = held_out_prompts(cfg.data, trainer.tokenizer, cfg.run.seed)
    if accelerator.is_main_process:
        print(f"[{cfg.rl.algo}] {len(trainer.stream.prompts)} training prompts from {', '.join(cfg.data.sources)} "
              f"({cfg.data.split}); {len(eval_prompts)} held-out ({cfg.data.eval_split})", file=sys.stderr)

    # 3. continue a killed run from its latest checkpoint
    if resume:
        ckpt.resume(trainer, checkpoint)
        logger.resumed_at(trainer.step_count)  # the killed run's later steps are redone: drop their records

    # 4. train, checkpointing every train.save_steps steps and at the end
    trainer.train(eval_prompts=eval_prompts)
    if trainer.cfg.train.save_steps == 0 or trainer.step_count % trainer.cfg.train.save_steps:
        ckpt.save(trainer)

    # 5. final artifacts: merged policy, adapter, value head (ppo); summary and reward/KL curve
    ckpt.save_final(trainer, run_dir / "final")
    logger.log_artifact(run_dir / "final", "model", inputs=[cfg.model.name, cfg.model.sft_adapter,
                                                            cfg.reward.model if cfg.reward.kind != "toy" else "",
                                                            *cfg.reward.ensemble])
    history = run_history(run_dir, "reward/composite")  # the whole run, also across a resume
    if accelerator.is_main_process and history:
        plot_reward_and_kl(run_dir / "metrics.jsonl", run_dir / "reward_kl.png",
                           cfg.kl.target if cfg.kl.adaptive else None)
        logger.log_images([run_dir / "reward_kl.png"], step=trainer.step_count)
        quarter = max(1, len(history) // 4)
        mean = lambda rows, key: sum(r.get(key, float("nan")) for r in rows) / len(rows)  # noqa: E731
        logger.summary({"steps": trainer.step_count,
                        "reward/composite_first": mean(history[:quarter], "reward/composite"),
                        "reward/composite_last": mean(history[-quarter:], "reward/composite"),
                        "objective/kl_mean": mean(history, "objective/kl"),
                        "objective/kl_last": mean(history[-quarter:], "objective/kl"),
                        "objective/kl_coef_last": history[-1].get("objective/kl_coef"),
                        "time/step_s_median": sorted(r["time/step_s"] for r in history)[len(history) // 2],
                        **eval_summary(run_dir)})
    logger.finish()
    return run_dir


if __name__ == "__main__":  # the same as `rlhf rl ...` (rlhf.stages holds the command)
    from rlhf.stages import STAGES

    sys.exit(STAGES["ppo"].cli(sys.argv[1:]))
