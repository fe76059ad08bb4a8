"""Ensembles of reward models: mean and spread across members, the conservative reward, and PPO's config."""
from __future__ import annotations

import math

import pytest
import torch

from reward_models.ensemble import RewardEnsemble, conservative_reward, mean_and_spread
from reward_models.model import new_reward_model, save_reward_model
from reward_models.scoring import RewardScorer
from reward_models.types import HEADS, RewardScores
from rlhf.core.config import ConfigError, load_config
from rlhf.rl.config import RLStageConfig

PROMPTS = ["\n\nHuman: How do I make bread?\n\nAssistant:", "Is the earth flat?", "Summarize: A met B."]
RESPONSES = ["Mix flour, water, yeast and salt, then bake.", "No, it is round.", "A and B met."]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def save_member(folder, backbone, seed, mean, std, weights=None):
    torch.manual_seed(seed)
    model, encoder, scoring = new_reward_model(backbone, max_length=64)
    scoring.mean, scoring.std = mean, std
    if weights:
        scoring.weights = weights
    return save_reward_model(model, encoder, scoring, folder)


@pytest.fixture(scope="module")
def members(tmp_path_factory, tiny_bert_path):
    root = tmp_path_factory.mktemp("ensemble")
    a = save_member(root / "a", tiny_bert_path, 0, {"helpful": 0.1, "honest": -0.2, "harmless": 0.3},
                    {"helpful": 2.0, "honest": 0.5, "harmless": 1.5})
    b = save_member(root / "b", tiny_bert_path, 1, {"helpful": 0.0, "honest": 0.4, "harmless": -0.1},
                    {"helpful": 0.5, "honest": 1.0, "harmless": 3.0}, {"helpful": 1.0, "honest": 2.0, "harmless": 0.5})
    return a, b


def test_mean_and_spread_by_hand():
    mean, spread = mean_and_spread(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))  # (members=2, batch=2)
    assert mean.tolist() == [2.0, 4.0] and spread.tolist() == [1.0, 2.0]  # population std: |a - b| / 2
    mean, spread = mean_and_spread(torch.tensor([[0.0], [1.0], [2.0]]))
    assert mean.item() == pytest.approx(1.0) and spread.item() == pytest.approx(math.sqrt(2 / 3))
    mean, spread = mean_and_spread(torch.tensor([[0.1, -7.3]] * 3))  # equal members: exact, no rounding
    assert mean.tolist() == torch.tensor([0.1, -7.3]).tolist() and spread.tolist() == [0.0, 0.0]
    assert mean_and_spread(torch.tensor([[5.0]]))[1].item() == 0.0  # one member: no spread, not NaN


def test_conservative_reward_by_hand():
    got = conservative_reward(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 2.0]), 0.5)
    assert got.tolist() == [0.75, 1.0]
    assert conservative_reward(torch.tensor([1.0]), torch.tensor([9.0]), 0.0).tolist() == [1.0]


def test_identical_members_have_zero_spread_and_the_single_models_scores(members):
    a, _ = members
    single = RewardScorer.from_pretrained(a, toxicity=None, precision="fp32")
    expected = single.score(PROMPTS, RESPONSES)
    ensemble = RewardEnsemble.from_pretrained([a, a, a], toxicity=None, precision="fp32")
    got = ensemble.score(PROMPTS, RESPONSES)
    assert torch.equal(got.spread, torch.zeros(3))
    assert torch.equal(got.composite, expected.composite)
    cfg = single.config
    for head in HEADS:  # the ensemble's heads are standardised (members' raw scales differ)
        assert torch.equal(got.head_spread[head], torch.zeros(3))
        assert torch.allclose(got.heads[head], (expected.heads[head] - cfg.mean[head]) / cfg.std[head], atol=1e-6)
    assert got.as_metrics()["reward/spread"] == 0.0


def test_two_different_members_spread_is_half_their_difference(members):
    a, b = members
    sa = RewardScorer.from_pretrained(a, toxicity=None, precision="fp32").score(PROMPTS, RESPONSES)
    sb = RewardScorer.from_pretrained(b, toxicity=None, precision="fp32").score(PROMPTS, RESPONSES)
    got = RewardEnsemble.from_pretrained([a, b], toxicity=None, precision="fp32").score(PROMPTS, RESPONSES)
    # by hand, for two members: mean = (x + y) / 2, population std = |x - y| / 2
    assert torch.allclose(got.composite, (sa.composite + sb.composite) / 2, atol=1e-6)
    assert torch.allclose(got.spread, (sa.composite - sb.composite).abs() / 2, atol=1e-6)
    assert (got.spread > 0).all()
    ca, cb = RewardScorer.from_pretrained(a, toxicity=None).config, RewardScorer.from_pretrained(b, toxicity=None).config
    for head in HEADS:
        za = (sa.heads[head] - ca.mean[head]) / ca.std[head]
        zb = (sb.heads[head] - cb.mean[head]) / cb.std[head]
        assert torch.allclose(got.heads[head], (za + zb) / 2, atol=1e-6)
        assert torch.allclose(got.head_spread[head], (za - zb).abs() / 2, atol=1e-6)
    metrics = got.as_metrics()
    assert metrics["reward/spread"] == pytest.approx(got.spread.mean().item())
    assert set(f"reward/spread_{h}" for h in HEADS) <= set(metrics)


def test_the_spread_penalty_gives_mean_minus_lambda_spread(members):
    a, b = members
    plain = RewardEnsemble.from_pretrained([a, b], toxicity=None, precision="fp32").score(PROMPTS, RESPONSES)
    conservative = RewardEnsemble.from_pretrained([a, b], toxicity=None, precision="fp32",
                                                  spread_penalty=0.7).score(PROMPTS, RESPONSES)
    assert torch.allclose(conservative.composite, plain.composite - 0.7 * plain.spread, atol=1e-6)
    assert torch.equal(conservative.spread, plain.spread)


def test_empty_batch_and_rows_keep_the_spread(members):
    a, b = members
    ensemble = RewardEnsemble.from_pretrained([a, b], toxicity=None, precision="fp32")
    assert ensemble.score([], []).composite.shape == (0,)
    scores = ensemble.score(PROMPTS, RESPONSES)
    picked = scores.select(torch.tensor([2, 0]))
    assert isinstance(picked, RewardScores) and torch.equal(picked.spread, scores.spread[[2, 0]])
    assert torch.equal(picked.head_spread["honest"], scores.head_spread["honest"][[2, 0]])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        ensemble.score(PROMPTS[:2], RESPONSES[:1])


def test_ppo_loads_an_ensemble_with_its_penalty(members):
    from rlhf.rl.scorers import load_scorer

    a, b = members
    cfg, _ = load_config(RLStageConfig, ["--reward.ensemble", f"[{a}, {b}]", "--reward.spread_penalty", "0.5"])
    scorer = load_scorer(cfg.reward, tokenizer=None, device=torch.device("cpu"))
    assert isinstance(scorer, RewardEnsemble) and scorer.spread_penalty == 0.5 and len(scorer.members) == 2
    default, _ = load_config(RLStageConfig, [])
    assert default.reward.ensemble == [] and default.reward.spread_penalty == 0.0  # off by default


def test_ppo_config_rejects_a_penalty_without_an_ensemble_and_bad_members(members, tmp_path):
    from rlhf.rl.scorers import check_ensemble

    a, b = members
    with pytest.raises(ConfigError, match="reward.spread_penalty"):
        load_config(RLStageConfig, ["--reward.spread_penalty", "0.5"])
    with pytest.raises(ConfigError, match="reward.spread_penalty"):
        load_config(RLStageConfig, ["--reward.ensemble", f"[{a}, {b}]", "--reward.spread_penalty", "-1"])
    with pytest.raises(ConfigError, match="reward.ensemble"):
        load_config(RLStageConfig, ["--reward.ensemble", f"[{a}, {b}]", "--reward.model", str(a)])
    cfg, _ = load_config(RLStageConfig, ["--reward.ensemble", f"[{a}, {tmp_path}]"])
    with pytest.raises(ConfigError, match=r"reward.ensemble\[1\]: .* is not a reward model folder"):
        check_ensemble(cfg.reward)


def test_ppo_stage_optimises_the_conservative_reward_and_logs_the_spread(members, run_cfg):
    from pathlib import Path

    from pipelines.ppo import main
    from rlhf.core.tracking import read_metrics

    a, b = members
    tiny = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "ppo_tiny.yaml"
    cfg, _ = load_config(RLStageConfig, ["--config", str(tiny), "--reward.kind", "model", "--reward.ensemble", f"[{a}, {b}]",
                                         "--reward.spread_penalty", "0.5", "--train.max_steps", "2", "--train.save_steps", "0",
                                         "--train.sample_every", "0", "--update.batch_size", "8", "--update.mini_batch_size", "4"])
    cfg.run = run_cfg
    run_dir = main(cfg)
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "reward/composite" in r]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["reward/spread"] > 0 and "reward/spread_harmless" in r for r in records)


# ---------------------------------------------------------------- conservative aggregates (issue 23): wco, uwo


def test_wco_is_the_worst_member_and_uwo_the_mean_minus_lambda_var_by_hand():
    from reward_models.ensemble import aggregate_members, uncertainty_weighted, worst_case

    two = torch.tensor([[1.0], [3.0]])  # (members=2, batch=1)
    assert worst_case(two).tolist() == [1.0]
    assert uncertainty_weighted(two, 0.0).tolist() == [2.0]  # λ = 0: the mean
    assert uncertainty_weighted(two, 0.5).tolist() == [1.5]  # mean 2, population variance 1: 2 - 0.5 * 1
    three = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])  # (3, 2): variances 2/3 and 0
    assert uncertainty_weighted(three, 3.0).tolist() == pytest.approx([1.0 - 2.0, 1.0])
    assert aggregate_members(three, "wco").tolist() == [0.0, 1.0]
    assert aggregate_members(three, "mean").tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="aggregate"):
        aggregate_members(three, "median")


def test_wco_and_uwo_ensembles_aggregate_each_standardised_head(members):
    a, b = members
    plain = RewardEnsemble.from_pretrained([a, b], toxicity=None, precision="fp32")
    za, zb = (normalised(RewardScorer.from_pretrained(m, toxicity=None, precision="fp32")) for m in (a, b))
    with pytest.raises(ValueError, match="weights"):  # members a and b weight their heads differently
        RewardEnsemble(plain.members, aggregate="wco")
    plain.members[1].config.weights = dict(plain.members[0].config.weights)  # one weighting for the aggregated heads
    weights = plain.members[0].config.weights
    for aggregate, expected in (("wco", {h: torch.minimum(za[h], zb[h]) for h in HEADS}),
                                ("uwo", {h: (za[h] + zb[h]) / 2 - 0.5 * ((za[h] - zb[h]) / 2) ** 2 for h in HEADS})):
        got = RewardEnsemble(plain.members, aggregate=aggregate, uwo_lambda=0.5).score(PROMPTS, RESPONSES)
        for h in HEADS:
            assert torch.allclose(got.heads[h], expected[h], atol=1e-5)
        assert torch.allclose(got.composite, sum(weights[h] * expected[h] for h in HEADS), atol=1e-5)
        assert (got.spread > 0).all() and "reward/spread" in got.as_metrics()


def normalised(scorer):
    cfg = scorer.config
    raw = scorer.score_heads(PROMPTS, RESPONSES)
    return {h: (raw[h] - cfg.mean[h]) / cfg.std[h] for h in HEADS}


@pytest.mark.parametrize("flags, key", [
    (["--reward.aggregate", "median"], "reward.aggregate"),
    (["--reward.aggregate", "wco"], "reward.aggregate"),
    (["--reward.aggregate", "uwo"], "reward.aggregate"),
    (["--reward.uwo_lambda", "-0.1"], "reward.uwo_lambda"),
])
def test_bad_aggregate_settings_are_one_line_naming_the_key(flags, key):
    with pytest.raises(ConfigError, match=key) as err:
        load_config(RLStageConfig, flags)
    assert "\n" not in str(err.value)


def test_an_ensemble_of_one_with_wco_or_uwo_is_refused(members):
    a, _ = members
    for aggregate in ("wco", "uwo"):
        with pytest.raises(ConfigError, match=r"reward.aggregate: .*>= 2 models"):
            load_config(RLStageConfig, ["--reward.ensemble", f"[{a}]", "--reward.aggregate", aggregate])


def test_ppo_loads_a_wco_ensemble_and_refuses_members_weighted_differently(members):
    from rlhf.rl.scorers import check_ensemble, load_scorer

    a, b = members
    cfg, _ = load_config(RLStageConfig, ["--reward.ensemble", f"[{a}, {a}]", "--reward.aggregate", "wco"])
    scorer = load_scorer(cfg.reward, tokenizer=None, device=torch.device("cpu"))
    assert isinstance(scorer, RewardEnsemble) and scorer.aggregate == "wco"
    cfg, _ = load_config(RLStageConfig, ["--reward.ensemble", f"[{a}, {b}]", "--reward.aggregate", "uwo"])
    with pytest.raises(ConfigError, match=r"reward.ensemble\[1\]: weights its heads"):
        check_ensemble(cfg.reward)
    with pytest.raises(ConfigError, match="reward.spread_penalty"):
        load_config(RLStageConfig, ["--reward.ensemble", f"[{a}, {b}]", "--reward.aggregate", "uwo",
                                    "--reward.spread_penalty", "0.5"])
