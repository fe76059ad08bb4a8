"""The trainers' parts on their own: the cross-process reducer on hand-computed cases, the one RL-trainer recipe
(the factory builds what the hand-written recipe built), and the reward trainer's setup / step / evaluate /
state shape."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlhf.core.config import load_config
from rlhf.rl.config import RLStageConfig
from rlhf.rl.reducers import ProcessReducer

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class OneProcess:
    """What the reducer needs of an accelerator, for one process: reduce and gather are the identity."""

    device = torch.device("cpu")
    num_processes, process_index, is_main_process = 1, 0, True

    def reduce(self, tensor, reduction="sum"):
        return tensor

    def gather(self, tensor):
        return tensor


def test_reducer_on_one_process_gives_the_masked_mean_and_unbiased_variance_by_hand():
    reduce = ProcessReducer(OneProcess())
    x = torch.tensor([[1.0, 2.0, 9.0], [3.0, 6.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # the 9s are padding
    mean, var = reduce.mean_var(x, mask)
    # entries 1, 2, 3, 6: mean 3, squared deviations 4 + 1 + 0 + 9 = 14, unbiased 14 / 3
    assert mean.item() == pytest.approx(3.0) and var.item() == pytest.approx(14 / 3)
    assert reduce.any(torch.tensor(True)) and not reduce.any(False)
    assert reduce.mean({"b": 2.0, "a": 1.0}) == {"a": 1.0, "b": 2.0}


def test_the_factory_builds_what_the_hand_written_recipe_built(run_cfg):
    """build_rl_trainer = tokenizer, policy (+ value head for ppo), scorer, prompts, trainer, in that order: the
    same seed gives the same trainable weights, prompts and first step as the recipe written out by hand."""
    from rlhf.rl.factory import build_rl_trainer
    from rlhf.rl.policy import build_policy_model, load_policy_tokenizer
    from rlhf.rl.prompts import prepare_prompts
    from rlhf.rl.scorers import load_scorer
    from rlhf.rl.trainer import RLTrainer

    cfg, _ = load_config(RLStageConfig, ["--config", str(ROOT / "pipelines/configs/ppo_tiny.yaml"),
                                         "--update.batch_size", "4", "--update.mini_batch_size", "4", "--update.epochs", "1",
                                         "--generation.max_new_tokens", "6", "--data.max_prompts", "16"])
    cfg.run = run_cfg
    torch.manual_seed(0)
    tokenizer = load_policy_tokenizer(cfg.model)
    model = build_policy_model(cfg, torch.float32)
    scorer = load_scorer(cfg.reward, tokenizer, torch.device("cpu"))
    by_hand = RLTrainer(cfg, model, tokenizer, scorer, prepare_prompts(cfg.data, tokenizer, cfg.run.seed))
    by_hand_step = by_hand.step()
    torch.manual_seed(0)
    built = build_rl_trainer(cfg, dtype=torch.float32)
    assert built.unwrapped.value_head is not None  # rl.algo ppo: the estimator reads values
    assert built.stream.prompts == by_hand.stream.prompts
    built_step = built.step()
    for key in ("loss/policy", "loss/value", "objective/kl", "response/length"):
        assert built_step[key] == by_hand_step[key], key
    after_hand, after_built = by_hand.unwrapped.trainable_state_dict(), built.unwrapped.trainable_state_dict()
    assert all(torch.equal(after_hand[n], after_built[n]) for n in after_hand)


def test_reward_trainer_has_setup_step_evaluate_and_state(tmp_path):
    from reward_models.train import RewardTrainer
    from test_reward_train import tiny_config, toy_preferences

    cfg = tiny_config(tmp_path, toy_preferences(tmp_path / "toy.jsonl", per_head=16), max_steps=4, batch_size=4)
    trainer = RewardTrainer(cfg)  # setup: run folder, pairs, model, optimizer, model inputs
    assert trainer.step_count == 0 and trainer.total_steps == 4
    trainer.model.train()
    metrics = trainer.step()  # log_every 1: every step returns its metrics
    assert trainer.step_count == 1 and metrics["loss/pairwise"] > 0 and "train/lr" in metrics
    accuracy, counts = trainer.evaluate()
    assert set(accuracy) == set(counts) and set(accuracy) <= {"helpful", "honest", "harmless"}
    state = trainer.state_dict()
    assert state["epoch"] == 0 and state["skipped_nonfinite"] == 0 and state["pairs_seen"] == 4
    trainer.load_state_dict({**state, "step": 3})
    assert trainer.step_count == 3
    assert trainer.train() and trainer.step_count == 4  # the loop finishes the run from there
    run_dir = trainer.finish()
    assert (run_dir / "final" / "reward_config.json").is_file() and (run_dir / "summary.json").is_file()
