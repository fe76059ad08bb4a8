"""The reward model's maths: masked Bradley–Terry loss and accuracy, against slow obvious versions."""
from __future__ import annotations

import math

import pytest
import torch

from reward_models.losses import pairwise_correct, pairwise_loss


def slow_pairwise_loss(chosen, rejected, mask, margin):
    """Loop over every labelled (pair, head): the definition, written out."""
    terms, per_head = [], []
    for h in range(chosen.shape[1]):
        head_terms = []
        for b in range(chosen.shape[0]):
            if mask[b, h]:
                m = 0.0 if margin is None else float(margin[b])
                x = float(chosen[b, h] - rejected[b, h]) - m
                head_terms.append(math.log1p(math.exp(-x)))  # -log sigmoid(x)
        terms += head_terms
        per_head.append(sum(head_terms) / len(head_terms) if head_terms else float("nan"))
    return sum(terms) / max(len(terms), 1), per_head


@pytest.mark.parametrize("with_margin", [False, True])
def test_pairwise_loss_matches_slow_reference(with_margin):
    gen = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(7, 3, generator=gen), torch.randn(7, 3, generator=gen)
    mask = torch.rand(7, 3, generator=gen) > 0.5
    mask[:, 2] = False  # one head with no labelled pair at all
    margin = torch.rand(7, generator=gen) if with_margin else None
    loss, per_head, counts = pairwise_loss(chosen, rejected, mask, margin)
    ref_loss, ref_per_head = slow_pairwise_loss(chosen, rejected, mask, margin)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    assert per_head[:2].tolist() == pytest.approx(ref_per_head[:2], rel=1e-5)
    assert math.isnan(per_head[2]) and math.isnan(ref_per_head[2])
    assert counts.tolist() == mask.sum(0).tolist()


def test_margin_asks_the_chosen_response_to_win_by_more():
    chosen, rejected, mask = torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([[True]])
    plain, _, _ = pairwise_loss(chosen, rejected, mask)
    with_margin, _, _ = pairwise_loss(chosen, rejected, mask, torch.tensor([0.5]))
    assert plain.item() == pytest.approx(-math.log(torch.sigmoid(torch.tensor(1.0)).item()))
    assert with_margin.item() == pytest.approx(-math.log(torch.sigmoid(torch.tensor(0.5)).item()))


def test_unlabelled_heads_get_exactly_zero_gradient():
    chosen = torch.randn(4, 3, requires_grad=True)
    rejected = torch.randn(4, 3, requires_grad=True)
    mask = torch.tensor([[False, True, False]] * 4)  # honest only
    loss, per_head, _ = pairwise_loss(chosen, rejected, mask)
    loss.backward()
    assert chosen.grad[:, [0, 2]].abs().sum() == 0 and rejected.grad[:, [0, 2]].abs().sum() == 0
    assert chosen.grad[:, 1].abs().sum() > 0
    assert math.isnan(per_head[0]) and math.isnan(per_head[2])


def test_an_unlabelled_head_with_an_infinite_loss_stays_finite():
    chosen = torch.tensor([[-1e30, 0.0]], requires_grad=True)  # head 0 would have loss ~1e30 if counted
    loss, _, _ = pairwise_loss(chosen, torch.tensor([[1e30, 0.0]]), torch.tensor([[False, True]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(chosen.grad).all()


def test_no_labelled_pair_gives_zero_loss():
    loss, _, counts = pairwise_loss(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0 and counts.sum() == 0


def test_pairwise_correct_counts_ties_as_half():
    chosen = torch.tensor([[1.0, 0.0], [0.0, 5.0], [2.0, 2.0]])
    rejected = torch.tensor([[0.0, 9.0], [1.0, 1.0], [2.0, 0.0]])
    mask = torch.tensor([[True, False], [True, True], [True, True]])
    correct, counts = pairwise_correct(chosen, rejected, mask)
    assert correct.tolist() == [1.5, 2.0] and counts.tolist() == [3, 2]
