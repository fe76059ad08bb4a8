"""The one recipe that builds an RL trainer from a config: the stage (``pipelines/ppo.py``), the toy task and the
benchmarks all build theirs here, so the order of the parts (and so the seeds they draw) is written once.

policy     the SFT start + LoRA (+ a value head when the estimator reads values): ``build_policy_model``
reference  the same weights with the adapters switched off (no second copy; ``PolicyModel.reference_logits``)
reward     the scorer ``reward.*`` names (``load_scorer``), or one the caller brings
sampler, estimator, policy loss: entries the trainer looks up from ``policy.sampler``, ``rl.algo``,
           ``rl.policy_loss``
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from reward_models.types import Scorer
from rlhf.rl.config import RLStageConfig
from rlhf.rl.trainer import RLTrainer


def build_rl_trainer(cfg: RLStageConfig, accelerator=None, *, scorer: Scorer | Callable[..., Scorer] | None = None,
                     prompts: Sequence[str] | None = None, dtype: torch.dtype | None = None, logger=None,
                     run_dir: str | Path | None = None) -> RLTrainer:
    """An :class:`RLTrainer` on the policy, scorer and prompts ``cfg`` names.

    ``scorer``: a scorer, or a function of the policy's tokenizer that makes one (default: ``reward.*``);
    ``prompts``: the training prompts (default: ``data.*``); ``dtype``: the policy's weights (default:
    ``policy.precision`` on the accelerator's device)."""
    from rlhf.rl.policy import build_policy_model, load_policy_tokenizer
    from rlhf.rl.prompts import prepare_prompts
    from rlhf.rl.scorers import load_scorer
    from rlhf.core.runtime import make_accelerator, resolve_dtype, select_device

    accelerator = accelerator or make_accelerator(select_device(cfg.run.device))
    # 1. the policy (the reference is its weights with the adapters off)
    tokenizer = load_policy_tokenizer(cfg.model)
    model = build_policy_model(cfg, dtype or resolve_dtype(cfg.train.precision, accelerator.device))
    # 2. the reward: trained HHH model, ensemble, classifier or toy (reward.*), or the caller's
    if scorer is None:
        scorer = load_scorer(cfg.reward, tokenizer, accelerator.device, runs_dir=cfg.run.output_dir)
    elif callable(scorer) and not hasattr(scorer, "score"):
        scorer = scorer(tokenizer)
    # 3. the training prompts (chat prompts that fit data.max_prompt_tokens)
    if prompts is None:
        prompts = prepare_prompts(cfg.data, tokenizer, cfg.run.seed)
    # 4. the trainer: sampler, estimator and policy loss are entries it looks up from the config
    return RLTrainer(cfg, model, tokenizer, scorer, prompts, accelerator=accelerator, logger=logger, run_dir=run_dir)
