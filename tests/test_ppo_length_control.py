"""Length control in RL (issue 23): the batch's linear trend of reward on response length, removed."""
from __future__ import annotations

import pytest
import torch

from rlhf.core.config import load_config
from rlhf.rl.config import RLStageConfig
from rlhf.rl.length_control import length_slope, remove_length_trend


def test_slope_by_hand():
    slope, mean_length = length_slope(torch.tensor([1.0, 2.0, 6.0]), torch.tensor([1.0, 2.0, 3.0]))
    # cov = ((-1)(-2) + 0 + (1)(3)) / 3 = 5/3, var = 2/3: slope 2.5 per token
    assert slope == pytest.approx(2.5) and mean_length == pytest.approx(2.0)
    assert length_slope(torch.tensor([1.0, 5.0]), torch.tensor([4.0, 4.0]))[0] == 0.0  # one length: no trend


def test_after_removal_the_reward_is_uncorrelated_with_length_and_keeps_its_mean():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 40, (64,), generator=generator).float()
    scores = -0.08 * lengths + torch.randn(64, generator=generator)  # a reward that prefers short answers
    detrended, slope = remove_length_trend(scores, lengths)
    assert slope < 0
    centred = lambda t: t.double() - t.double().mean()  # noqa: E731
    corr = (centred(detrended) * centred(lengths)).sum() / (centred(detrended).norm() * centred(lengths).norm())
    assert abs(corr.item()) < 1e-6
    assert detrended.mean().item() == pytest.approx(scores.mean().item(), abs=1e-6)
    # by hand: scores [1, 2, 6] on lengths [1, 2, 3], slope 2.5 -> [1 + 2.5, 2, 6 - 2.5]
    by_hand, _ = remove_length_trend(torch.tensor([1.0, 2.0, 6.0]), torch.tensor([1.0, 2.0, 3.0]))
    assert by_hand.tolist() == pytest.approx([3.5, 2.0, 3.5])


def test_the_line_is_fitted_on_the_gathered_batch():
    scores, lengths = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])
    other = (torch.tensor([6.0]), torch.tensor([3.0]))  # another process's rollout
    gather = lambda t: torch.cat([t, other[0] if t is scores else other[1]])  # noqa: E731
    detrended, slope = remove_length_trend(scores, lengths, gather)
    assert slope == pytest.approx(2.5) and detrended.tolist() == pytest.approx([3.5, 2.0])


def test_length_detrend_is_off_by_default_and_a_key():
    assert load_config(RLStageConfig, [])[0].reward.length_detrend is False
    assert load_config(RLStageConfig, ["--reward.length_detrend", "true"])[0].reward.length_detrend is True


class LengthScorer:
    """A reward that only counts characters: all trend, no content."""

    def score(self, prompts, responses):  # noqa: ARG002
        from reward_models.types import RewardScores

        composite = torch.tensor([0.1 * len(r) for r in responses], dtype=torch.float32)
        return RewardScores(composite=composite, heads={"helpful": composite.clone()})


def test_the_trainer_removes_the_trend_and_logs_its_slope(run_cfg, monkeypatch):
    import rlhf.rl.trainer as trainer_module
    from tests.test_ppo_trainer import make_trainer, tiny_cfg

    seen = []

    def spy(scores, lengths, gather):
        detrended, slope = remove_length_trend(scores, lengths, gather)
        seen.append((scores.clone(), lengths.clone(), detrended, slope))
        return detrended, slope

    monkeypatch.setattr(trainer_module, "remove_length_trend", spy)
    small = ("--update.batch_size", "8", "--update.mini_batch_size", "8", "--update.micro_batch_size", "4", "--update.epochs", "1")
    metrics = make_trainer(tiny_cfg(run_cfg, *small, "--reward.length_detrend", "true"), scorer=LengthScorer()).step()
    (scores, lengths, detrended, slope), = seen
    assert scores.shape == lengths.shape == (8,)
    assert metrics["reward/length_slope"] == pytest.approx(slope)
    assert lengths.mean().item() == pytest.approx(metrics["response/length"])
    plain = make_trainer(tiny_cfg(run_cfg, *small), scorer=LengthScorer()).step()
    assert "reward/length_slope" not in plain and len(seen) == 1
