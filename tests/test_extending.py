"""README "How to extend", shown working: a new advantage estimator, a new policy loss and a new reward head are
each one entry where the existing ones are declared, and the RL trainer (built by the one factory) or the
reward stage runs with it unchanged. The estimator and the loss are registered here by monkeypatching their
tables; the head by adding a name to ``rlhf.data.records.DIMENSIONS`` before anything reads it (in a subprocess)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from rlhf.core.config import load_config
from rlhf.rl import advantages, losses
from rlhf.rl.advantages import AdvantageEstimator
from rlhf.rl.config import RLStageConfig
from rlhf.rl.factory import build_rl_trainer
from rlhf.rl.losses import PolicyLoss
from rlhf.rl.maths import masked_mean

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "pipelines" / "configs" / "ppo_tiny.yaml"
SMALL = ["--update.batch_size", "4", "--update.mini_batch_size", "8", "--update.micro_batch_size", "4", "--update.epochs", "1",
         "--generation.max_new_tokens", "6", "--data.max_prompts", "16", "--train.save_steps", "0",
         "--train.sample_every", "0"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_cfg(run_cfg, *overrides: str) -> RLStageConfig:
    cfg, _ = load_config(RLStageConfig, ["--config", str(TINY), *SMALL, *overrides])
    cfg.run = run_cfg
    return cfg


class VowelScorer:
    """Share of vowels in a response: a reward that differs between samples (the toy token is rare on the random
    tiny Llama, so its group-relative advantages would all be zero)."""

    def score(self, prompts, responses):
        from reward_models.types import RewardScores

        share = torch.tensor([sum(ch in "aeiou" for ch in r) / max(len(r), 1) for r in responses])
        return RewardScores(share, {"helpful": share})


def lora_weights(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------- a new advantage estimator


@dataclass
class BestOfGroup(AdvantageEstimator):
    """A toy estimator: a sample's score minus the best score of its group (so only the best sample is not
    pushed down); critic-free, compares the k samples of a prompt."""

    needs_groups = True
    calls = 0  # how often the trainer asked it (class-wide: the trainer builds its own instance)

    def sequence_scores(self, scores, k):
        type(self).calls += 1
        groups = scores.reshape(-1, k)  # (prompts, k)
        return (groups - groups.max(1, keepdim=True).values).reshape(-1)


def test_a_new_advantage_estimator_is_one_entry_and_the_trainer_runs_it(monkeypatch, run_cfg):
    monkeypatch.setitem(advantages.ESTIMATORS, "best_of_group", BestOfGroup)
    cfg = small_cfg(run_cfg, "--rl.algo", "rloo", "--rl.samples_per_prompt", "2", "--update.gamma", "0.9")
    cfg.rl.algo = "best_of_group"  # the rl.algo literal is the other line a new estimator adds (rlhf/rl/config.py)
    torch.manual_seed(cfg.run.seed)
    trainer = build_rl_trainer(cfg, scorer=VowelScorer(), dtype=torch.float32)
    assert type(trainer.estimator) is BestOfGroup and trainer.estimator.gamma == 0.9  # its declared settings
    assert trainer.unwrapped.value_head is None  # needs_values False: the factory built no value head
    before = lora_weights(trainer)
    BestOfGroup.calls = 0
    metrics = trainer.step()
    assert BestOfGroup.calls == 1
    assert "reward/group_std" in metrics  # the trainer read its needs_groups flag
    assert metrics["ppo/updates"] >= 1 and torch.isfinite(torch.tensor(metrics["loss/policy"]))
    assert any(not torch.equal(before[n], p) for n, p in lora_weights(trainer).items())  # it learned from it


# ---------------------------------------------------------------- a new policy loss


@dataclass
class Unclipped(PolicyLoss):
    """A toy loss: the plain importance-weighted policy gradient, -ratio * advantage, with no clipping."""

    calls = 0

    def __call__(self, logprobs, old_logprobs, advantages, mask, aggregation="token_mean", max_len=0):
        type(self).calls += 1
        log_ratio = logprobs - old_logprobs
        ratio = torch.exp(log_ratio)
        loss = masked_mean(-ratio * advantages, mask)
        return {"loss": loss, "clipfrac": torch.zeros(()), "approxkl": masked_mean(0.5 * log_ratio**2, mask),
                "ratio": masked_mean(ratio, mask)}


def test_a_new_policy_loss_is_one_entry_and_the_trainer_looks_it_up(monkeypatch, run_cfg):
    monkeypatch.setitem(losses.POLICY_LOSSES, "unclipped", Unclipped)
    cfg = small_cfg(run_cfg, "--rl.algo", "grpo", "--rl.samples_per_prompt", "2")
    cfg.rl.policy_loss = "unclipped"  # the rl.policy_loss literal is the other line a new loss adds
    torch.manual_seed(cfg.run.seed)
    trainer = build_rl_trainer(cfg, scorer=VowelScorer(), dtype=torch.float32)
    assert type(trainer.policy_loss) is Unclipped
    before = lora_weights(trainer)
    Unclipped.calls = 0
    metrics = trainer.step()
    # 4 prompts x 2 samples = 8 rollouts: one mini-batch of two micro-batches, one epoch
    assert Unclipped.calls == 2 and metrics["ppo/updates"] == 1.0
    assert metrics["policy/clipfrac"] == 0.0
    assert any(not torch.equal(before[n], p) for n, p in lora_weights(trainer).items())


# ---------------------------------------------------------------- a new reward head

NEW_HEAD = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import rlhf.data.records
    rlhf.data.records.DIMENSIONS = (*rlhf.data.records.DIMENSIONS, "concise")  # the one line a new head adds

    from reward_models.config import RewardStageConfig
    from reward_models.scoring import RewardScorer
    from reward_models.train import train_reward_model

    out = Path(sys.argv[1])
    rows = [{"prompt": f"Question {i}: what is {t}?", "chosen": f"{t} is a thing.",
             "rejected": f"Well, {t} is, as many people have said over many long years, a thing of some kind.",
             "dimension": ["concise"]} for i, t in enumerate(["bread", "rain", "maps", "soup", "cats", "chess"] * 4)]
    rows += [{"prompt": f"Help {i}", "chosen": "Glad to help, thank you.", "rejected": "Go away.",
              "dimension": ["helpful"]} for i in range(24)]
    (out / "pairs.jsonl").write_text("\\n".join(json.dumps(r) for r in rows) + "\\n")
    cfg = RewardStageConfig()
    cfg.model.name, cfg.model.max_length, cfg.model.min_prompt_tokens = "tiny-bert", 64, 16
    cfg.data.sources, cfg.data.extra_files, cfg.data.extra_files_split = [], [str(out / "pairs.jsonl")], "train"
    cfg.data.partition, cfg.data.pairs_per_head = "all", 0
    cfg.train.batch_size, cfg.train.learning_rate, cfg.train.head_learning_rate, cfg.train.max_steps = 4, 3e-3, 3e-3, 4
    cfg.train.save_steps, cfg.eval.test = 0, False
    cfg.run.output_dir, cfg.run.run_name, cfg.run.wandb_mode = str(out / "runs"), "rm", "disabled"
    run_dir = train_reward_model(cfg)
    scores = RewardScorer.from_pretrained(str(run_dir / "final")).score(["What is rain?"], ["Rain is water."])
    print(json.dumps({"heads": sorted(scores.heads),
                      "losses": sorted({k for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                                        for k in json.loads(line) if k.startswith("loss/")})}))
""")


def test_a_new_reward_head_is_one_name_and_the_reward_stage_trains_and_scores_it(tmp_path):
    """Every user of the heads reads ``rlhf.data.records.DIMENSIONS`` (records, the model's outputs, the loss masks,
    the scorer, reports): adding a name there gives the reward model a new trained head."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", NEW_HEAD, str(tmp_path)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heads"] == sorted(["helpful", "honest", "harmless", "concise"])
    assert "loss/concise" in result["losses"]  # the new head was trained on its own pairs
