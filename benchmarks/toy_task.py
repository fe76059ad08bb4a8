"""A toy PPO task that any working PPO must solve in a CPU minute: raise the share of one chosen token.

The shared ``tiny-llama`` is initialised like a real model (std 0.02), so its next-token distribution is
almost uniform over 1,024 tokens and its logits can hardly move: no token is frequent enough to learn
from. :func:`build_toy_policy` builds the same architecture with a larger init scale, so the
distribution is peaked and LoRA can shift it; :func:`frequent_token` picks a token the untrained policy
already samples now and then.

Used by ``benchmarks/rl_losses_tiny.py`` and by the RL tests (``from benchmarks.toy_task import ...``, the
repository root on the path): test and benchmark fixtures stay out of the library.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import torch

TINY_PRESET = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "ppo_tiny.yaml"


def build_toy_policy(out_dir: str | Path, seed: int = 0, init_scale: float = 0.3) -> Path:
    from rlhf.models.tiny import build_tiny_llama

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    return build_tiny_llama(out_dir, seed=seed, init_scale=init_scale)


def frequent_token(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor) -> int:
    """The most frequent sampled token that survives decode -> encode (what a text scorer sees), EOS excluded."""
    def round_trips(token: int) -> bool:
        return tokenizer(tokenizer.decode([token]), add_special_tokens=False)["input_ids"] == [token]

    counts = Counter(t for t, m in zip(response_ids.flatten().tolist(), response_mask.flatten().tolist())
                     if m and t != tokenizer.eos_token_id)
    return next(token for token, _ in counts.most_common() if round_trips(token))


def build_toy_trainer(folder: str | Path, run, overrides: Sequence[str] = ()):
    """An RLTrainer on the toy task: the toy policy, the tiny preset with ``overrides``, the token-share reward
    aimed at a token the untrained policy already samples (so there is something to learn from the start)."""
    from rlhf.core.config import load_config
    from rlhf.rl.config import RLStageConfig
    from rlhf.rl.factory import build_rl_trainer

    policy = build_toy_policy(Path(folder) / "toy-policy")
    cfg, _ = load_config(RLStageConfig, ["--config", str(TINY_PRESET), "--model.name", str(policy), *overrides])
    cfg.run = run
    torch.manual_seed(cfg.run.seed)
    # As the stage builds it: the toy scorer, with any reward.functions beside it.
    trainer = build_rl_trainer(cfg, dtype=torch.float32)
    scorer = trainer.maker.scorer
    probe = trainer.maker.make(trainer.stream.prompts[:32])
    toy = getattr(scorer, "base", scorer)  # the token-share scorer under a FunctionScorer
    toy.token_id = frequent_token(trainer.tokenizer, probe.responses_ids, probe.response_mask)
    return trainer
