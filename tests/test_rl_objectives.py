"""Issue 24's objectives and losses on hand-computed cases: clip-higher and GSPO, dynamic sampling, the overlong
penalty, the Lagrangian multipliers, GDPO's per-head normalisation, reward functions and a plain classifier;
the config's refusals in one line; on the toy task, a trainer step with each and a resume that keeps lambda."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from reward_models.types import RewardScores
from rlhf.core.config import ConfigError, load_config
from rlhf.rl.config import RewardSection, RLStageConfig
from rlhf.rl.losses import POLICY_LOSSES, make_policy_loss
from rlhf.rl.maths import group_normalize, zero_variance_groups
from rlhf.rl.objectives import RewardObjective, lagrange_update, normalize_then_sum
from rlhf.rl.rewards import overlong_penalty

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"


# ---------------------------------------------------------------- policy losses


def test_clip_higher_clips_the_ratio_at_one_minus_eps_low_and_one_plus_eps_high():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 0.5]]))  # ratios 1.5 and 0.5
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    out = make_policy_loss("clip_higher", 0.2, 0.28)(new, old, adv, mask)
    # token 1 (A = +1): max(-1 * 1.5, -1 * min(1.5, 1.28)); token 2 (A = -1): max(1 * 0.5, 1 * max(0.5, 0.8))
    expected = (max(-1.5, -1.28) + max(0.5, 0.8)) / 2
    assert out["loss"].item() == pytest.approx(expected)
    assert out["clipfrac"].item() == pytest.approx(1.0)
    symmetric = make_policy_loss("clip", 0.2, 0.28)(new, old, adv, mask)  # clip ignores clip_range_high
    assert symmetric["loss"].item() == pytest.approx((max(-1.5, -1.2) + max(0.5, 0.8)) / 2)


def test_gspo_uses_one_length_normalised_ratio_per_response():
    old = torch.zeros(2, 2)
    new = torch.tensor([[0.1, 0.3], [0.5, 9.0]], requires_grad=True)  # row 1's second token is padding
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.ones(2, 2)
    loss = make_policy_loss("gspo", 0.2, 0.3)
    s0, s1 = math.exp((0.1 + 0.3) / 2), math.exp(0.5)  # 1.221 (inside), 1.649 (clipped at 1.3)
    out = loss(new, old, adv, mask, "token_mean")
    assert out["loss"].item() == pytest.approx((2 * -min(s0, 1.3) + -min(s1, 1.3)) / 3, rel=1e-6)
    assert out["ratio"].item() == pytest.approx((2 * s0 + s1) / 3, rel=1e-6)
    assert loss(new, old, adv, mask, "sequence_mean")["loss"].item() == pytest.approx((-s0 - 1.3) / 2, rel=1e-6)
    out["loss"].backward()
    # d/d logp_t of -(2 s0 + 1.3) / 3, s0 = exp(mean of row 0): each row-0 token gets -s0 / 3; row 1 is clipped
    torch.testing.assert_close(new.grad, torch.tensor([[-s0 / 3, -s0 / 3], [0.0, 0.0]]))


def test_every_policy_loss_is_an_entry_of_the_table():
    assert set(POLICY_LOSSES) == {"clip", "clip_higher", "gspo"}
    with pytest.raises(ValueError, match="unknown policy loss"):
        make_policy_loss("dpo")


# ---------------------------------------------------------------- dynamic sampling, overlong shaping


def test_dynamic_sampling_drops_exactly_the_groups_whose_scores_are_all_equal():
    scores = torch.tensor([1.0, 1.0, 0.0, 2.0, 3.0, 3.0, 0.5, 0.5000001])
    expected = torch.tensor([True, True, False, False, True, True, False, False])
    torch.testing.assert_close(zero_variance_groups(scores, 2), expected)
    assert zero_variance_groups(torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0, 1.0]), 3).tolist() == [True] * 3 + [False] * 3


def test_overlong_penalty_before_at_inside_and_beyond_the_buffer():
    lengths = torch.tensor([10, 15, 16, 18, 20, 25])  # max_new_tokens 20, buffer 5: the buffer is (15, 20]
    penalty = overlong_penalty(lengths, max_new_tokens=20, buffer=5, penalty=1.0)
    expected = [0.0, 0.0, -(16 - 15) / 5, -(18 - 15) / 5, -1.0, -1.0]
    torch.testing.assert_close(penalty, torch.tensor(expected))
    assert overlong_penalty(lengths, 20, 5, 0.5)[3].item() == pytest.approx(-0.5 * 3 / 5)
    assert overlong_penalty(lengths, 20, 0).abs().sum().item() == 0.0  # buffer 0: off


# ---------------------------------------------------------------- Lagrangian, GDPO


def test_lagrange_update_on_a_known_violation_sequence_clamps_at_zero_and_lambda_max():
    lambdas, seen = {"harmless": 1.0}, []
    for violation in [0.5, 1.0, -0.5, -3.0, 0.2]:
        lambdas = lagrange_update(lambdas, {"harmless": violation}, lr=1.0, lambda_max=2.0)
        seen.append(lambdas["harmless"])
    # 1 + 0.5; 1.5 + 1.0 = 2.5 -> 2 (lambda_max); 2 - 0.5; 1.5 - 3 = -1.5 -> 0; 0 + 0.2
    assert seen == pytest.approx([1.5, 2.0, 1.5, 0.0, 0.2])
    assert lagrange_update({"a": 1.0}, {"a": 0.5}, lr=0.1, lambda_max=5.0)["a"] == pytest.approx(1.05)


def test_lagrangian_objective_weighs_constraints_by_lambda_and_moves_lambda_from_the_violation():
    reward = RewardSection(kind="toy", objective="lagrangian", constraints={"harmless": 0.0})
    objective = RewardObjective(reward, scorer=None, heads=["helpful", "harmless"])
    scores = RewardScores(composite=torch.zeros(2), heads={"helpful": torch.tensor([1.0, -1.0]),
                                                             "harmless": torch.tensor([-2.0, 0.0])})
    # lambda 1: (helpful + 1 * harmless) / (1 + 1)
    torch.testing.assert_close(objective.composite(scores), torch.tensor([(1 - 2) / 2, (-1 + 0) / 2]))
    violation = objective.violations(scores)
    assert violation == {"harmless": pytest.approx(0.0 - (-2.0 + 0.0) / 2)}  # tau - mean = +1: violated
    objective.update(violation)
    assert objective.lambdas == {"harmless": pytest.approx(1.0 + 0.1 * 1.0)}
    assert objective.metrics() == {"lagrangian/lambda_harmless": pytest.approx(1.1)}
    with pytest.raises(ConfigError, match=r"reward.constraints: no head 'honest'"):
        RewardObjective(RewardSection(kind="toy", objective="lagrangian", constraints={"honest": 0.0}), None,
                        heads=["helpful"])


def test_gdpo_normalises_each_head_of_a_two_head_batch_before_the_sum():
    a = torch.tensor([1.0, 3.0, 2.0, 6.0])  # each group of 2 ranks row 2 above row 1
    b = torch.tensor([10.0, 0.0, 5.0, 5.0])  # group 1 the other way round, 10x the scale; group 2 flat
    out = normalize_then_sum(torch.stack([a, b], 1), torch.tensor([1.0, 1.0]), lambda s: group_normalize(s, 2))
    # head a grouped: +-1/sqrt2 in both groups; over the batch (std sqrt(2/3)): +-sqrt(3)/2
    # head b grouped: (+-1/sqrt2, 0, 0); over the batch (std sqrt(1/3)): (+-sqrt(3/2), 0, 0)
    d = math.sqrt(1.5) - math.sqrt(0.75)
    summed = [d, -d, -math.sqrt(0.75), math.sqrt(0.75)]
    std = math.sqrt((2 * d * d + 2 * 0.75) / 3)
    torch.testing.assert_close(out, torch.tensor([x / std for x in summed]), atol=1e-3, rtol=0)
    plain = group_normalize(a + b, 2)  # a plain sum: head b's scale decides group 1, head a's order is lost
    assert plain[0] > plain[1] and out[0] > out[1] and out[3] > out[2]
    assert abs(out[0].item()) < abs(plain[0].item())  # head a pulls the other way in group 1


# ---------------------------------------------------------------- any reward


def word_count(prompts, completions):
    """A reward function for the tests: words per completion."""
    return [float(len(c.split())) for c in completions]


def one_score(prompts, completions):  # noqa: ARG001
    return [1.0]


def test_reward_functions_join_the_heads_and_bad_ones_are_one_line(tmp_path):
    from rlhf.rl.scorers import FunctionScorer, TokenCountScorer, check_reward_model
    from rlhf.models.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    toy = TokenCountScorer(tokenizer, 100)  # a token id
    scorer = FunctionScorer(toy, [f"{__name__}:word_count"])
    scores = scorer.score(["p", "q"], ["one two three", "four"])
    torch.testing.assert_close(scores.heads["word_count"], torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(scores.composite, toy.score(["p", "q"], ["one two three", "four"]).composite
                               + torch.tensor([3.0, 1.0]))
    assert scorer.heads == ["helpful", "word_count"]  # the toy's head, then one per function
    with pytest.raises(ConfigError, match=r"^reward.functions\[0\]: .*returned 1 scores for 2 completions"):
        FunctionScorer(toy, [f"{__name__}:one_score"]).score(["p", "q"], ["a", "b"])
    with pytest.raises(ConfigError, match=r"^reward.functions\[0\]: cannot import 'no_such_module_xyz:f'"):
        check_reward_model(RewardSection(kind="toy", functions=["no_such_module_xyz:f"]))
    with pytest.raises(ConfigError, match=r"^reward.functions\[0\]: cannot import"):
        check_reward_model(RewardSection(kind="toy", functions=[f"{__name__}:missing"]))
    # a constraint may name a function's head; an unknown one is refused before any model loads
    check_reward_model(RewardSection(kind="toy", functions=[f"{__name__}:word_count"], objective="lagrangian",
                                     constraints={"word_count": 2.0}))
    with pytest.raises(ConfigError, match=r"^reward.constraints: no head 'harmless'"):
        check_reward_model(RewardSection(kind="toy", objective="lagrangian", constraints={"harmless": 0.0}))


def test_a_plain_one_output_classifier_is_a_reward_model_standardised_on_its_first_batch(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from rlhf.rl.scorers import check_reward_model, load_scorer
    from rlhf.models.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path / "plain-rm"
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    reward = RewardSection(model=str(folder), functions=[f"{__name__}:word_count"])
    assert check_reward_model(reward) == folder
    scorer = load_scorer(reward, tokenizer, torch.device("cpu"))
    completions = ["yes", "no thanks", "a longer answer here", "maybe so"]
    first = scorer.score(["q"] * 4, completions)
    assert set(first.heads) == {"reward", "word_count"}
    assert first.heads["reward"].mean().item() == pytest.approx(0.0, abs=1e-5)  # standardised on this batch
    assert first.heads["reward"].std().item() == pytest.approx(1.0, abs=1e-4)
    again = scorer.score(["q"] * 2, completions[:2])  # then the statistics stay: same text, same score
    torch.testing.assert_close(again.heads["reward"], first.heads["reward"][:2])
    torch.testing.assert_close(first.composite, first.heads["reward"] + first.heads["word_count"])

    two = tmp_path / "two-outputs"
    config.num_labels = 2
    LlamaForSequenceClassification(config).save_pretrained(two)
    with pytest.raises(ConfigError, match=r"^reward.model: .* 2 outputs"):
        check_reward_model(RewardSection(model=str(two)))


# ---------------------------------------------------------------- the config's refusals


@pytest.mark.parametrize("argv, key", [
    (["--rl.policy_loss", "clip_higher", "--update.clip_range_high", "0.1"], "update.clip_range_high"),
    (["--rl.policy_loss", "gspo", "--update.clip_range", "0.001", "--update.clip_range_high", "0.0005"],
     "update.clip_range_high"),
    (["--reward.objective", "lagrangian"], "reward.constraints"),
    (["--reward.constraints", "{harmless: 0.0}"], "reward.constraints"),
    (["--rl.dynamic_sampling", "true"], "rl.dynamic_sampling"),
    (["--rl.overlong_buffer", "100"], "rl.overlong_buffer"),
    (["--reward.lambda_init", "6"], "reward.lambda_init"),
    (["--reward.functions", "[nocolon]"], "reward.functions"),
])
def test_cli_refuses_bad_objective_settings_in_one_line(capsys, argv, key):
    from rlhf.stages import STAGES
    cli = STAGES["ppo"].cli

    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {key}") and "\n" not in err, err


# ---------------------------------------------------------------- in the trainer


GROUP = ["--rl.algo", "grpo", "--update.batch_size", "4", "--rl.samples_per_prompt", "4", "--update.mini_batch_size", "8",
         "--update.micro_batch_size", "4"]


@pytest.mark.parametrize("extra", [
    ["--rl.policy_loss", "clip_higher"],
    ["--rl.policy_loss", "gspo", "--update.clip_range", "0.0003", "--update.clip_range_high", "0.0004"],
    ["--rl.dynamic_sampling", "true", "--rl.overlong_buffer", "4", "--rl.mask_truncated", "true"],
    ["--reward.aggregation", "normalize_then_sum"],
], ids=["clip_higher", "gspo", "dapo_shaping", "gdpo"])
def test_each_option_runs_a_grpo_step_with_its_metrics(run_cfg, tmp_path, extra):
    """The word-count function beside the toy reward gives every group some spread (the toy's share of one token
    is 0 for most early groups: no advantage, no update), so each loss must move the LoRA weights."""
    from test_rl_family import toy_trainer

    trainer = toy_trainer(run_cfg, tmp_path, *GROUP, *extra, "--reward.functions", f"[{__name__}:word_count]")
    before = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}
    metrics = [trainer.step() for _ in range(2)][-1]
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert "reward/word_count" in metrics
    if "--rl.dynamic_sampling" in extra:
        assert 0 <= metrics["rollout/dropped_groups"] <= 4 and "rollout/masked_truncated" in metrics
        assert metrics["objective/overlong_penalty"] <= 0
    else:
        assert any(not torch.equal(before[n], p) for n, p in trainer.unwrapped.named_parameters() if n in before)


def test_lagrangian_multiplier_is_logged_checkpointed_and_resumed(run_cfg, tmp_path):
    from test_rl_family import toy_trainer

    from rlhf.rl import checkpoint as ckpt

    # the toy's one head is "helpful"; its standardised mean sits near 0, so tau 0.5 is violated: lambda rises
    overrides = [*GROUP, "--reward.objective", "lagrangian", "--reward.constraints", "{helpful: 0.5}",
                 "--reward.lambda_lr", "0.5"]
    first = toy_trainer(run_cfg, tmp_path, *overrides)
    first.run_dir = tmp_path / "run"
    m1, m2 = first.step(), first.step()
    assert m1["lagrangian/lambda_helpful"] == pytest.approx(1.0)
    assert m2["lagrangian/lambda_helpful"] == pytest.approx(1.0 + 0.5 * m1["lagrangian/violation_helpful"])
    ckpt.save(first)
    lam = first.objective.lambdas["helpful"]
    assert lam > 1.0
    resumed = toy_trainer(run_cfg, tmp_path, *overrides)
    ckpt.resume(resumed, tmp_path / "run")
    assert resumed.objective.lambdas == {"helpful": pytest.approx(lam)}
