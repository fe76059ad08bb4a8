"""Evaluation metrics on hand-made cases, and against slow obviously-correct references where one exists."""
from __future__ import annotations

import math

import pytest
import torch

from rlhf.evaluation import metrics
from rlhf.models.logprobs import sequence_kl


# ---------------------------------------------------------------- ROUGE


def test_rouge_identical_is_one_and_disjoint_is_zero():
    same = metrics.rouge(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    disjoint = metrics.rouge(["dogs bark loudly"], ["the cat sat on the mat"])
    assert disjoint == pytest.approx({"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0})


def test_rouge_hand_computed_partial_overlap():
    # prediction "the cat sat" vs reference "the cat sat on the mat":
    # ROUGE-1: 3 matches, P = 3/3, R = 3/6 -> F = 2/3. ROUGE-2: bigrams "the cat", "cat sat" match: P = 2/2,
    # R = 2/5 -> F = 4/7. ROUGE-L: LCS 3 -> same as ROUGE-1.
    scores = metrics.rouge(["the cat sat"], ["the cat sat on the mat"])
    assert scores["rouge1"] == pytest.approx(2 / 3)
    assert scores["rouge2"] == pytest.approx(4 / 7)
    assert scores["rougeL"] == pytest.approx(2 / 3)
    # Averages over pairs, and word order matters only for ROUGE-2/L.
    shuffled = metrics.rouge(["mat the on sat cat the"], ["the cat sat on the mat"])
    assert shuffled["rouge1"] == pytest.approx(1.0)
    assert shuffled["rouge2"] == 0.0 and shuffled["rougeL"] == pytest.approx(0.5)  # LCS e.g. "the sat the"
    pair = metrics.rouge(["the cat sat on the mat", "mat the on sat cat the"], ["the cat sat on the mat"] * 2)
    assert pair["rougeL"] == pytest.approx((1.0 + 0.5) / 2)
    assert metrics.mean_rouge([{"rouge1": 1.0, "rouge2": 0.0, "rougeL": 0.5}, {"rouge1": 0.0, "rouge2": 1.0,
                                                                           "rougeL": 0.5}]) == {
        "rouge1": 0.5, "rouge2": 0.5, "rougeL": 0.5}
    assert all(v != v for v in metrics.mean_rouge([]).values())  # NaN: no pairs, no score


def test_rouge_rejects_unpaired_lists():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metrics.rouge(["a", "b"], ["a"])


# ---------------------------------------------------------------- BLEU


def test_bleu_hand_cases():
    assert metrics.corpus_bleu(["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(1.0)
    assert metrics.corpus_bleu(["dogs bark"], [["the cat sat"]]) == 0.0
    # Brevity penalty: a correct but short hypothesis (3 of 6 tokens, unigram precision 1) -> BP = e^(1 - 2).
    short = metrics.corpus_bleu(["the cat sat"], [["the cat sat on the mat"]], max_n=1)
    assert short == pytest.approx(math.exp(-1.0))
    # Clipping: "the the the" against "the cat" has 1 clipped unigram match of 3.
    assert metrics.corpus_bleu(["the the the"], [["the cat"]], max_n=1) == pytest.approx(1 / 3)
    # A second reference for one hypothesis only: the best-matching one counts.
    assert metrics.corpus_bleu(["a b", "c d"], [["x y", "a b"], ["c d"]], max_n=2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one reference"):
        metrics.corpus_bleu(["a"], [[]])


def test_bleu_is_sacrebleus_with_its_signature():
    import sacrebleu  # a dependency of the project, not optional
    hyps = ["The quick brown fox jumps over the lazy dog.", "A man is talking to his friend about the weather.",
            "She will buy a new car next week."]
    refs = [["The fast brown fox jumped over the lazy dog.", "A quick brown fox jumps over a lazy dog."],
            ["The man talks with his friend about the weather today."],
            ["Next week she is going to buy a new car.", "She buys a new car next week."]]
    score, signature = metrics.bleu(hyps, refs)
    streams = [[r[0] for r in refs], [r[1] if len(r) > 1 else None for r in refs]]
    assert score == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score / 100, abs=1e-12)
    assert "tok:13a" in signature and f"version:{sacrebleu.__version__}" in signature


# ---------------------------------------------------------------- win-rate


def test_wilson_interval_known_values():
    # 8 of 10 at 95 %: the textbook Wilson interval is (0.4902, 0.9433).
    low, high = metrics.wilson_interval(8, 10, 0.95)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    # Never outside [0, 1], even at the extremes, and never zero width.
    low, high = metrics.wilson_interval(0, 5)
    assert low == 0.0 and 0 < high < 1


def test_win_rate_counts_ties_as_half_and_interval_shrinks_with_n():
    wr = metrics.win_rate([3.0, 1.0, 2.0, 5.0], [1.0, 2.0, 2.0, 0.0])
    assert (wr.wins, wr.ties, wr.losses, wr.n) == (2, 1, 1, 4)
    assert wr.rate == pytest.approx(2.5 / 4)
    assert wr.low < wr.rate < wr.high
    # With a tie margin, small differences are ties.
    assert metrics.win_rate([1.05, 2.0], [1.0, 1.0], tie_margin=0.1).ties == 1
    small = metrics.win_rate([1.0] * 6 + [0.0] * 4, [0.5] * 10)
    large = metrics.win_rate([1.0] * 60 + [0.0] * 40, [0.5] * 100)
    assert small.rate == large.rate == pytest.approx(0.6)
    assert (large.high - large.low) < (small.high - small.low)


def test_win_rate_all_ties_is_one_half():
    wr = metrics.win_rate([1.0] * 20, [1.0] * 20)
    assert wr.rate == 0.5 and wr.low < 0.5 < wr.high


def test_win_rate_rejects_unpaired():
    with pytest.raises(ValueError, match="paired"):
        metrics.win_rate([1.0], [1.0, 2.0])


def test_mean_interval():
    mean, low, high = metrics.mean_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    half = 1.959964 * math.sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3 / 4)  # sample variance 5/3
    assert (low, high) == pytest.approx((2.5 - half, 2.5 + half), abs=1e-5)


# ---------------------------------------------------------------- distinct-n, length, EOS


def test_distinct_n_hand_cases():
    # "a b a b": unigrams a, b, a, b -> 2 distinct of 4; bigrams ab, ba, ab -> 2 of 3.
    assert metrics.distinct_n(["a b a b"], 1) == pytest.approx(0.5)
    assert metrics.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    # Counted over the whole set: the same answer twice halves distinct-1.
    assert metrics.distinct_n(["x y z", "x y z"], 1) == pytest.approx(0.5)
    assert metrics.distinct_n(["x y z", "u v w"], 1) == 1.0
    assert metrics.distinct_n(["", "a"], 2) == 0.0  # no bigrams at all
    degenerate = ["I am sorry I am sorry I am sorry"] * 4
    varied = ["The meeting is at noon.", "Paris is in France.", "He bought two apples.", "Dogs like to run."]
    assert metrics.distinct_n(degenerate, 2) < 0.2 < 0.9 < metrics.distinct_n(varied, 2)


def test_length_and_eos_rate():
    assert metrics.mean_length([2, 4, 6]) == 4
    assert metrics.eos_rate([True, False, True, True]) == 0.75
    assert math.isnan(metrics.eos_rate([]))


def test_refusal_rate_hand_cases():
    refusals = ["I\u2019m sorry, I\u2019m unable to provide that information.",  # curly apostrophes, as sampled
                "I have no comment.", "As an AI I cannot help with that.", "Honestly, I don't know."]
    answers = ["I'm sorry to hear that. Try talking to your boss first.",  # sympathy, then an answer
               "Paris is the capital of France.", "#Person1# asks #Person2# about the meeting."]
    assert [metrics.is_refusal(t) for t in refusals] == [True] * 4
    assert [metrics.is_refusal(t) for t in answers] == [False] * 3
    assert metrics.refusal_rate(refusals[:1] + answers) == 0.25  # 1 of 4
    assert math.isnan(metrics.refusal_rate([]))


# ---------------------------------------------------------------- KL


def test_sequence_kl_zero_for_identical_policies_and_masked():
    logp = torch.log(torch.tensor([[0.5, 0.2, 0.9], [0.1, 0.3, 0.7]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    kl = sequence_kl(logp, logp.clone(), mask)
    assert torch.allclose(kl["k1"], torch.zeros(2)) and torch.allclose(kl["k3"], torch.zeros(2))
    # Only masked-in tokens count: changing the reference at a padded position changes nothing.
    ref = logp.clone()
    ref[0, 2] = -10.0
    assert torch.allclose(sequence_kl(logp, ref, mask)["k1"], torch.zeros(2))


def test_sequence_kl_hand_computed_and_signs():
    # One token: policy p = 0.8, reference q = 0.2. k1 = log 4; k3 = (0.25 - 1) + log 4.
    logp, logq = torch.log(torch.tensor([[0.8]])), torch.log(torch.tensor([[0.2]]))
    kl = sequence_kl(logp, logq, torch.ones(1, 1))
    assert kl["k1"].item() == pytest.approx(math.log(4), rel=1e-5)
    assert kl["k3"].item() == pytest.approx(-0.75 + math.log(4), rel=1e-5)
    # A token the reference likes more than the policy: k1 < 0 for that sample, but k3 stays >= 0.
    kl = sequence_kl(logq, logp, torch.ones(1, 1))
    assert kl["k1"].item() < 0 < kl["k3"].item()
    # Tokens sum along the sequence.
    two = sequence_kl(logp.repeat(1, 2), logq.repeat(1, 2), torch.ones(1, 2))
    assert two["k1"].item() == pytest.approx(2 * math.log(4), rel=1e-5)


def test_sequence_kl_estimators_agree_with_exact_kl_on_samples():
    """Slow, obviously-correct reference: the exact KL of two categoricals vs the mean estimate on samples."""
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.2, 0.5, 0.3])
    exact = sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist()))
    tokens = torch.multinomial(p, 40_000, replacement=True, generator=gen).view(-1, 4)  # (10000, 4) sampled from p
    kl = sequence_kl(p.log()[tokens], q.log()[tokens], torch.ones_like(tokens))
    assert kl["k1"].mean().item() == pytest.approx(4 * exact, rel=0.05)
    assert kl["k3"].mean().item() == pytest.approx(4 * exact, rel=0.05)
    assert (kl["k3"] >= 0).all() and (kl["k1"] < 0).any()


def test_sequence_kl_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        sequence_kl(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4))


# ---------------------------------------------------------------- rank correlation


def test_average_ranks_share_ties_by_hand():
    from rlhf.evaluation.metrics import average_ranks

    assert average_ranks([10, 20, 20, 5]) == [2, 3.5, 3.5, 1]
    assert average_ranks([3, 3, 3]) == [2, 2, 2]
    assert average_ranks([]) == []


def test_spearman_by_hand():
    from rlhf.evaluation.metrics import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    # ranks x = 1 2 3 4, y = 2 1 4 3: d^2 = 1+1+1+1 = 4, rho = 1 - 6*4 / (4*15) = 0.6
    assert spearman([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6)
    # a tie: ranks y = 1.5 1.5 3 -> Pearson of (1,2,3) and (1.5,1.5,3): sxy = 1.5, sxx = 2, syy = 1.5
    assert spearman([1, 2, 3], [7, 7, 9]) == pytest.approx(1.5 / math.sqrt(2 * 1.5))
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))  # nothing to rank on one side
    assert math.isnan(spearman([1], [2]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1])


def test_cluster_bootstrap_interval_resamples_whole_groups():
    from rlhf.evaluation.metrics import cluster_bootstrap_interval

    mean_of = lambda groups: sum(v for g in groups for v in g) / sum(len(g) for g in groups)  # noqa: E731
    # every group alike: every resample gives the same statistic, so the interval is that point
    assert cluster_bootstrap_interval([[1.0, 3.0]] * 5, mean_of) == (2.0, 2.0)
    # two groups: a resample is {a, a}, {a, b} or {b, b}; its mean lies between the groups' means
    low, high = cluster_bootstrap_interval([[0.0, 0.0], [1.0, 1.0]], mean_of, resamples=400, seed=3)
    assert (low, high) == (0.0, 1.0)
    assert cluster_bootstrap_interval([[0.0], [1.0], [5.0]], mean_of, seed=7) == \
        cluster_bootstrap_interval([[0.0], [1.0], [5.0]], mean_of, seed=7)  # seeded
    assert all(math.isnan(v) for v in cluster_bootstrap_interval([[1.0]], mean_of))


def test_rouge_pairs_are_the_per_pair_scores_that_rouge_averages():
    predictions, references = ["the cat sat", "a dog ran home"], ["the cat sat down", "the dog ran"]
    pairs = metrics.rouge_pairs(predictions, references)
    # "the cat sat" vs "the cat sat down": LCS 3, P 3/3, R 3/4 -> F 6/7; "a dog ran home" vs "the dog ran": LCS 2,
    # P 2/4, R 2/3 -> F 4/7
    assert [p["rougeL"] for p in pairs] == pytest.approx([6 / 7, 4 / 7])
    assert metrics.rouge(predictions, references)["rougeL"] == pytest.approx(5 / 7)
    assert metrics.rouge_pairs([], []) == []
