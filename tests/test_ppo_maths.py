"""PPO maths on hand-computed cases and against slow, obviously-correct references."""
from __future__ import annotations

import math

import pytest
import torch

from rlhf.models.logprobs import entropy_from_logits, kl_per_token, logprobs_from_logits, response_mask, sequence_kl
from rlhf.rl.kl import AdaptiveKLController, FixedKLController, make_kl_controller
from rlhf.rl.maths import clipped_policy_loss, clipped_value_loss, gae, masked_mean, masked_var, masked_whiten
from rlhf.rl.rewards import RunningMoments, place_scores, shape_scores


def slow_gae(values, rewards, lengths, gamma, lam):
    """Textbook GAE, one sequence and one step at a time, in Python floats."""
    adv = torch.zeros_like(values)
    for b, n in enumerate(lengths):
        last = 0.0
        for t in reversed(range(n)):
            next_value = values[b, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            last = delta + gamma * lam * last
            adv[b, t] = last
    returns = (adv + values) * (torch.arange(values.shape[1]) < torch.tensor(lengths)[:, None])
    return adv, returns


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (1.0, 0.0)])
def test_gae_equals_slow_loop(gamma, lam):
    torch.manual_seed(0)
    lengths = [7, 3, 1, 5]
    values, rewards = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    mask = (torch.arange(7) < torch.tensor(lengths)[:, None]).double()
    fast_adv, fast_ret = gae(values, rewards, mask, gamma, lam)
    slow_adv, slow_ret = slow_gae(values, rewards, lengths, gamma, lam)
    torch.testing.assert_close(fast_adv, slow_adv)
    torch.testing.assert_close(fast_ret, slow_ret)


def test_masked_statistics_ignore_padding():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert masked_mean(x, mask).item() == pytest.approx(2.5)
    assert masked_var(x, mask).item() == pytest.approx(torch.tensor([1.0, 2, 3, 4]).var().item())
    white = masked_whiten(x, mask)
    assert white[:, 2].abs().sum() == 0  # padding stays 0
    assert masked_mean(white, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(white, mask).item() == pytest.approx(1.0, rel=1e-4)


def test_kl_estimators_hand_computed():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_per_token(logp, ref, "k1").item() == pytest.approx(math.log(2))
    # k3 = (q/p - 1) - log(q/p) with q/p = 0.5
    assert kl_per_token(logp, ref, "k3").item() == pytest.approx(-0.5 + math.log(2))
    assert kl_per_token(ref, logp, "k3").item() == pytest.approx(1.0 - math.log(2))  # q/p = 2
    assert kl_per_token(logp, logp, "k3").item() == 0.0
    with pytest.raises(ValueError):
        kl_per_token(logp, ref, "k2")


def test_kl_estimators_are_unbiased_for_the_true_kl():
    torch.manual_seed(0)
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.3, 0.3, 0.4])
    samples = torch.multinomial(p, 200_000, replacement=True)
    true_kl = (p * (p / q).log()).sum().item()
    for estimator in ("k1", "k3"):
        estimate = kl_per_token(p.log()[samples], q.log()[samples], estimator).mean().item()
        assert estimate == pytest.approx(true_kl, abs=0.01), estimator


def test_adaptive_kl_controller_hand_computed():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=100)
    ctl.update(current_kl=9.0, n_steps=10)  # error clipped to +0.2 -> x (1 + 0.2 * 10 / 100)
    assert ctl.value == pytest.approx(0.102)
    ctl.update(current_kl=5.4, n_steps=10)  # error -0.1 -> x (1 - 0.01)
    assert ctl.value == pytest.approx(0.102 * 0.99)
    ctl.update(current_kl=0.0, n_steps=50)  # error clipped to -0.2 -> x 0.9
    assert ctl.value == pytest.approx(0.102 * 0.99 * 0.9)
    restored = make_kl_controller(0.5, True, 6.0, 100)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value
    fixed = FixedKLController(0.1)
    fixed.update(100.0, 10)
    assert fixed.value == 0.1


def test_clipped_policy_loss_hand_computed():
    old = torch.zeros(1, 2)
    new = torch.full((1, 2), math.log(1.5))  # ratio 1.5 on both tokens
    adv = torch.tensor([[1.0, -1.0]])
    out = clipped_policy_loss(new, old, adv, torch.ones(1, 2), clip_range=0.2)
    # token 1: max(-1.5, -1.2) = -1.2 (clipped active); token 2: max(1.5, 1.2) = 1.5 (unclipped)
    assert out["loss"].item() == pytest.approx((-1.2 + 1.5) / 2)
    assert out["clipfrac"].item() == pytest.approx(0.5)
    assert out["ratio"].item() == pytest.approx(1.5)
    assert out["approxkl"].item() == pytest.approx(0.5 - math.log(1.5))
    masked = clipped_policy_loss(new, old, adv, torch.tensor([[1.0, 0.0]]), clip_range=0.2)
    assert masked["loss"].item() == pytest.approx(-1.2)


def test_policy_loss_gradient_is_zero_when_clipped():
    new = torch.full((1, 1), math.log(1.5), requires_grad=True)
    clipped_policy_loss(new, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2)["loss"].backward()
    assert new.grad.item() == 0.0


def test_clipped_value_loss_hand_computed():
    out = clipped_value_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]]),
                             torch.ones(1, 1), clip_range=0.2)
    # unclipped (1 - 2)^2 = 1; clipped value 0.2: (0.2 - 2)^2 = 3.24; 0.5 * max = 1.62
    assert out["loss"].item() == pytest.approx(1.62)
    assert out["clipfrac"].item() == 1.0
    inside = clipped_value_loss(torch.tensor([[0.1]]), torch.tensor([[0.0]]), torch.tensor([[2.0]]),
                                torch.ones(1, 1), clip_range=0.2)
    assert inside["loss"].item() == pytest.approx(0.5 * 1.9**2)


def test_logprobs_and_entropy_from_logits():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 11)
    tokens = torch.randint(0, 11, (2, 3))
    expected = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, tokens), expected)
    assert entropy_from_logits(torch.zeros(1, 1, 4)).item() == pytest.approx(math.log(4))
    probs = torch.softmax(logits, -1)
    torch.testing.assert_close(entropy_from_logits(logits), -(probs * probs.log()).sum(-1))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_no_grad_log_probs_and_entropy_by_row_chunks_equal_one_pass(monkeypatch, temperature):
    """The no-grad path reduces the logits a few rows at a time (memory); the result must not change,
    and the gradient path (one pass) must give the same values."""
    from rlhf.models import logprobs  # the one module of log-probs, masks and KL (evaluation and RL)

    torch.manual_seed(0)
    logits = torch.randn(3, 5, 13).to(torch.bfloat16)  # bf16 in, float32 out, as under autocast
    tokens = torch.randint(0, 13, (3, 5))
    scaled = logits.float() / temperature
    expected_logprobs = torch.log_softmax(scaled, -1).gather(-1, tokens[..., None]).squeeze(-1)
    probs = torch.softmax(scaled, -1)
    expected_entropy = -(probs * probs.log()).sum(-1)
    monkeypatch.setattr(logprobs, "NO_GRAD_CHUNK_ELEMENTS", 2 * 13)  # 2 rows per chunk: 8 chunks, the last short
    chunked = logprobs_from_logits(logits, tokens, temperature), entropy_from_logits(logits, temperature)
    graph = logits.float().requires_grad_()
    whole = logprobs_from_logits(graph, tokens, temperature), entropy_from_logits(graph, temperature)
    for got, want, expected in zip(chunked, whole, (expected_logprobs, expected_entropy)):
        assert got.dtype == torch.float32 and got.shape == (3, 5)
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(want.detach(), expected)


@pytest.mark.parametrize("dtype,temperature", [(torch.float64, 1.0), (torch.float64, 0.7), (torch.bfloat16, 0.7)])
def test_log_probs_gradient_by_row_chunks_equals_autograd(monkeypatch, dtype, temperature):
    """The chunked backward of logprobs_from_logits against autograd through log_softmax."""
    from rlhf.models import logprobs  # the one module of log-probs, masks and KL (evaluation and RL)

    torch.manual_seed(0)
    base = torch.randn(3, 5, 13, dtype=torch.float64)
    tokens = torch.randint(0, 13, (3, 5))
    weights = torch.randn(3, 5, dtype=torch.float64)
    reference = base.to(dtype).double().requires_grad_()
    expected = torch.log_softmax(reference / temperature, -1).gather(-1, tokens[..., None]).squeeze(-1)
    (expected * weights).sum().backward()
    monkeypatch.setattr(logprobs, "NO_GRAD_CHUNK_ELEMENTS", 2 * 13)
    logits = base.to(dtype).requires_grad_()
    got = logprobs_from_logits(logits, tokens, temperature)
    (got * weights.float()).sum().backward()
    assert got.dtype == torch.float32 and logits.grad.dtype == dtype
    tol = {"atol": 1e-2, "rtol": 1e-2} if dtype == torch.bfloat16 else {"atol": 1e-6, "rtol": 1e-5}
    torch.testing.assert_close(got.double(), expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits.grad.double(), reference.grad, **tol)


def test_token_rewards_put_the_score_on_the_last_response_token():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 9.0, 9.0]])
    rewards = place_scores(torch.tensor([1.0, 2.0]), -0.5 * kl, mask)  # KL penalty coefficient 0.5
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, -0.1, -0.15 + 1.0], [-0.25 + 2.0, 0.0, 0.0]]))


def test_shape_scores_penalty_normalisation_clip():
    scores, has_eos = torch.tensor([1.0, 3.0, 10.0]), torch.tensor([True, False, True])
    out = shape_scores(scores, has_eos, missing_eos_penalty=2.0, moments=None, clip=5.0)
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0, 5.0]))
    moments = RunningMoments()
    moments.update(torch.tensor([1.0, 3.0]))
    moments.update(torch.tensor([5.0]))
    assert moments.mean == pytest.approx(3.0)
    assert moments.var == pytest.approx(torch.tensor([1.0, 3.0, 5.0]).var(unbiased=False).item())
    normed = shape_scores(torch.tensor([3.0, 5.0]), torch.tensor([True, True]), 0.0, moments, clip=0.0)
    torch.testing.assert_close(normed, torch.tensor([0.0, 2.0 / moments.std]))


def test_response_mask_from_eos_position_even_when_pad_is_eos():
    eos = 7
    # row 0 ends at its EOS, followed by pad (= EOS); row 1 never ends; row 2 ends at once
    ids = torch.tensor([[3, 4, eos, eos, eos], [3, 4, 5, 6, 3], [eos, eos, eos, eos, eos]])
    mask, has_eos = response_mask(ids, eos)
    torch.testing.assert_close(mask, torch.tensor([[1.0, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]))
    assert has_eos.tolist() == [True, False, True]


def test_rl_and_evaluation_kl_are_one_estimator():
    """RL's per-token KL summed over a response is evaluation's per-sequence KL (rlhf.models.logprobs, written once):
    p = 1/2, q = 1/4 on the first token (k1 = log 2, k3 = -1/2 + log 2), equal on the second, masked third."""
    logp = torch.tensor([[math.log(0.5), math.log(0.3), 0.0]])
    ref = torch.tensor([[math.log(0.25), math.log(0.3), -5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    per_sequence = sequence_kl(logp, ref, mask)
    for estimator, expected in (("k1", math.log(2)), ("k3", -0.5 + math.log(2))):
        assert per_sequence[estimator].item() == pytest.approx(expected, abs=1e-6)
        assert (kl_per_token(logp, ref, estimator) * mask).sum().item() == pytest.approx(expected, abs=1e-6)
