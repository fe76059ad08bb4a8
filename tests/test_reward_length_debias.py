"""Length-debiased reward training (issue 23): the covariate, ODIN's decorrelation term, length-balanced batches."""
from __future__ import annotations

import json
import math

import pytest
import torch

from reward_models.data import balanced_batches
from reward_models.losses import fit_length_coefficient, length_correlation_penalty, pairwise_loss, pearson
from reward_models.config import RewardStageConfig
from rlhf.core.config import ConfigError, load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_length_coefficient_by_hand():
    # Δ = [2, 2, -2]: d/dβ [2 log σ(2β) + log σ(-2β)] = 0  <=>  σ(2β) = 2/3  <=>  β = log(2) / 2
    assert fit_length_coefficient(torch.tensor([2.0, 2.0, -2.0])) == pytest.approx(math.log(2) / 2, abs=1e-9)
    assert fit_length_coefficient(torch.tensor([3.0, -3.0, 1.0, -1.0])) == pytest.approx(0.0, abs=1e-12)
    assert fit_length_coefficient(torch.tensor([0.0, 0.0])) == 0.0  # no unequal pair: length says nothing
    # chosen always shorter: the maximum is at -inf; capped where the median pair is 99 % sure
    assert fit_length_coefficient(torch.tensor([-4.0, -4.0, -2.0])) == pytest.approx(-math.log(99) / 4)


def test_the_offset_is_added_to_each_pairs_logit():
    zeros, mask = torch.zeros(1, 3), torch.tensor([[False, False, True]])
    loss, per_head, _ = pairwise_loss(zeros, zeros, mask, offset=torch.full((1, 3), math.log(3)))
    assert loss.item() == pytest.approx(math.log(4 / 3))  # -log σ(log 3) = -log(3/4)
    with_margin, _, _ = pairwise_loss(zeros, zeros, mask, margin=torch.tensor([1.0]), offset=torch.ones(1, 3))
    assert with_margin.item() == pytest.approx(math.log(2))  # margin and offset cancel: -log σ(0)


def test_pearson_and_the_decorrelation_penalty_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0])
    assert pearson(x, 2 * x).item() == pytest.approx(1.0)
    assert pearson(x, x.flip(0)).item() == pytest.approx(-1.0)
    assert pearson(x, torch.ones(3)).item() == 0.0
    lengths = torch.tensor([1, 2, 3, 4])
    scores = torch.stack([-lengths.float(), torch.tensor([1.0, -1.0, -1.0, 1.0]), torch.zeros(4)], 1)  # (4, 3)
    mask = torch.tensor([[True, True, False]] * 4)
    # head 0 anti-correlated (|corr| = 1), head 1 uncorrelated (0), head 2 unlabelled: mean of 1 and 0
    assert length_correlation_penalty(scores, lengths, mask).item() == pytest.approx(0.5)
    none = length_correlation_penalty(scores, lengths, torch.zeros(4, 3, dtype=torch.bool))
    assert none.item() == 0.0


def test_length_balanced_batches_draw_half_with_the_chosen_longer():
    chosen_longer = [i % 10 == 0 for i in range(100)]  # 10 % of the pairs: the HH harmless shape
    pools = {"harmless": list(range(100))}
    batches = balanced_batches(pools, 60, 8, seed=0, epoch=0, chosen_longer=chosen_longer)
    drawn = [i for b in batches for i in b]
    assert len(drawn) == 60 and sum(chosen_longer[i] for i in drawn) == 30
    assert balanced_batches(pools, 60, 8, 0, 0, chosen_longer=chosen_longer) == batches  # (seed, epoch) decide
    plain = [i for b in balanced_batches(pools, 60, 8, seed=0, epoch=0) for i in b]
    assert sum(chosen_longer[i] for i in plain) < 15
    one_sided = balanced_batches(pools, 60, 8, 0, 0, chosen_longer=[False] * 100)  # nothing to balance with
    assert sorted(i for b in one_sided for i in b) == sorted(plain)


def test_a_negative_decorrelation_weight_is_one_line_naming_the_key():
    with pytest.raises(ConfigError, match="train.length_decorrelation"):
        load_config(RewardStageConfig, ["--train.length_decorrelation", "-0.1"])
    cfg, _ = load_config(RewardStageConfig, [])
    assert not cfg.data.length_balance and not cfg.train.length_covariate and cfg.train.length_decorrelation == 0.0


def test_a_debiased_run_fits_the_covariate_and_logs_the_decorrelation(tmp_path):
    from reward_models.train import train_reward_model
    from rlhf.core.tracking import read_metrics
    from tests.test_reward_train import tiny_config, toy_preferences

    cfg = tiny_config(tmp_path, toy_preferences(tmp_path / "toy.jsonl", per_head=16), max_steps=3,
                      length_covariate=True, length_decorrelation=0.5)
    cfg.data.length_balance, cfg.eval.test = True, False
    run_dir = train_reward_model(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    # the toy's chosen answer is always longer: β is the positive cap
    assert summary["train/length_coef_harmless"] > 0
    assert any("loss/length_correlation" in m for m in read_metrics(run_dir / "metrics.jsonl"))
    assert (run_dir / "final" / "reward_config.json").is_file()
