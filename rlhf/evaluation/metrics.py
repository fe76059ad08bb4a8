"""Evaluation metrics as pure functions: overlap with references, preference win-rate, diversity, KL.

Everything here takes plain lists or tensors and returns numbers, so each metric is tested on hand-made
cases (``tests/test_metrics.py``). All scores are fractions in [0, 1] (ROUGE and BLEU too), never percents.

* ROUGE-1/2/L F-measure (``rouge_score``, Porter stemming: the DialogSum convention).
* BLEU: corpus BLEU through sacreBLEU (standard tokenisation; its signature goes into the report).
* Win-rate of A over B with ties counting half, and a Wilson score interval.
* Spearman's rank correlation (ties averaged), and a bootstrap interval that resamples whole groups.
* distinct-n (Li et al., 2016), response length, EOS rate, refusal rate: signs of degenerate output and reward hacking.
* KL of a policy to its reference on its own samples, per sequence: ``rlhf.models.logprobs.sequence_kl`` (shared with RL).
"""
from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Callable, Sequence


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: the tokenisation distinct-n counts on."""
    return _TOKEN.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


# ---------------------------------------------------------------- ROUGE


def rouge_pairs(predictions: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """ROUGE-1/2/L F-measure of each (prediction, reference) pair: ``[{"rouge1": .., "rouge2": .., "rougeL": ..}]``."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"rouge: {len(predictions)} predictions but {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scored = (scorer.score(reference, prediction) for prediction, reference in zip(predictions, references))
    return [{name: scores[name].fmeasure for name in ROUGE_TYPES} for scores in scored]  # (target, prediction)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure over pairs: ``{"rouge1": .., "rouge2": .., "rougeL": ..}``."""
    return mean_rouge(rouge_pairs(predictions, references))


def mean_rouge(pairs: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of per-pair scores (:func:`rouge_pairs`); NaN for none."""
    if not pairs:
        return {name: float("nan") for name in ROUGE_TYPES}
    return {name: sum(p[name] for p in pairs) / len(pairs) for name in ROUGE_TYPES}


# ---------------------------------------------------------------- BLEU


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> tuple[float, str]:
    """(corpus BLEU as a fraction, sacreBLEU's signature): sacreBLEU's standard settings (13a tokenisation,
    mixed case, exponential smoothing), so the number is comparable with published ones and the signature
    says how it was computed. Hypotheses may have different numbers of references."""
    from sacrebleu.metrics import BLEU

    if len(hypotheses) != len(references):
        raise ValueError(f"bleu: {len(hypotheses)} hypotheses but {len(references)} reference lists")
    if any(not refs for refs in references):
        raise ValueError("bleu: every hypothesis needs at least one reference")
    metric = BLEU(max_ngram_order=max_n)
    if not hypotheses:
        return float("nan"), str(metric.get_signature())
    # sacreBLEU takes reference streams (the k-th reference of every hypothesis); None pads the shorter lists.
    depth = max(len(refs) for refs in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(depth)]
    score = metric.corpus_score(list(hypotheses), streams)
    return score.score / 100.0, str(metric.get_signature())


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Corpus BLEU as a fraction (sacreBLEU, see :func:`bleu`)."""
    return bleu(hypotheses, references, max_n)[0]


# ---------------------------------------------------------------- win-rate and intervals


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf((1 + confidence) / 2)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion; ``successes`` may be fractional (ties counted as halves)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    z = _z(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class WinRate:
    rate: float  # (wins + ties / 2) / n
    low: float  # Wilson interval at `confidence`
    high: float
    wins: int
    ties: int
    losses: int
    n: int
    confidence: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def win_rate(scores: Sequence[float], baseline_scores: Sequence[float], tie_margin: float = 0.0,
             confidence: float = 0.95) -> WinRate:
    """How often ``scores[i]`` beats ``baseline_scores[i]`` (paired: the same prompt).

    A difference of at most ``tie_margin`` is a tie; ties count half.
    """
    if len(scores) != len(baseline_scores):
        raise ValueError(f"win_rate: {len(scores)} scores but {len(baseline_scores)} baseline scores (must be paired)")
    wins = ties = losses = 0
    for score, base in zip(scores, baseline_scores):
        diff = float(score) - float(base)
        if abs(diff) <= tie_margin:
            ties += 1
        elif diff > 0:
            wins += 1
        else:
            losses += 1
    n = len(scores)
    rate = (wins + ties / 2) / n if n else float("nan")
    low, high = wilson_interval(wins + ties / 2, n, confidence)
    return WinRate(rate, low, high, wins, ties, losses, n, confidence)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): a normal-approximation interval of the mean (t would be wider for tiny n)."""
    n = len(values)
    if n == 0:
        return (float("nan"),) * 3
    mean = sum(values) / n
    if n == 1:
        return (mean, float("nan"), float("nan"))
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = _z(confidence) * math.sqrt(var / n)
    return (mean, mean - half, mean + half)


# ---------------------------------------------------------------- rank correlation


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of the ranks they span: [10, 20, 20, 5] -> [2, 3.5, 3.5, 1]."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's r of the average ranks (so ties are handled). NaN when fewer than
    two values, or when either side is constant (nothing to rank)."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} values against {len(y)}")
    if len(x) < 2:
        return float("nan")
    rx, ry = average_ranks(x), average_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def cluster_bootstrap_interval(groups: Sequence[Any], statistic: Callable[[list[Any]], float],
                               resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``statistic(groups)`` with whole groups resampled with replacement (samples of one
    group are not independent: resampling them one by one would make the interval too narrow). Seeded; resamples
    whose statistic is NaN are dropped. (NaN, NaN) for fewer than two groups."""
    if len(groups) < 2:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    values = sorted(v for v in (statistic([groups[rng.randrange(len(groups))] for _ in groups])
                                for _ in range(resamples)) if not math.isnan(v))
    if not values:
        return (float("nan"), float("nan"))
    tail = (1 - confidence) / 2
    pick = lambda q: values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]  # noqa: E731
    return (pick(tail), pick(1 - tail))


# ---------------------------------------------------------------- diversity and shape of responses


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams over the whole set of texts; low values = repetitive output."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        grams = _ngrams(tokenize(text), n)
        seen.update(grams)
        total += sum(grams.values())
    return len(seen) / total if total else 0.0


def mean_length(lengths: Sequence[int]) -> float:
    return sum(lengths) / len(lengths) if lengths else float("nan")


def eos_rate(ended: Sequence[bool]) -> float:
    """Fraction of responses that stopped at EOS rather than running into max_new_tokens."""
    return sum(bool(e) for e in ended) / len(ended) if ended else float("nan")


# A refusal or non-answer, found by phrase (the keyword matching of Zou et al. 2023's refusal check, plus
# TruthfulQA's "I have no comment"). The phrases over-count a little ("I can't wait") and miss paraphrases; they
# are the same for every policy, so a change between policies is what to read. An HHH reward whose honest head
# learned from TruthfulQA (where "I have no comment" is a true answer) and whose harmless head learned from HH
# (where refusing is the safe choice) pays for refusing everything: this rate is how that shows.
REFUSAL_PHRASES = ("i'm sorry", "i am sorry", "i apologize", "i apologise", "my apologies", "as an ai",
                   "as a language model", "i cannot", "i can't", "i can not", "unable to", "not able to",
                   "i won't", "i will not", "no comment", "i don't know", "i do not know", "no idea")
NOT_REFUSALS = ("sorry to hear",)  # sympathy, not a refusal: removed before the phrases are looked for


def is_refusal(text: str) -> bool:
    """Whether ``text`` contains a refusal phrase (case and curly apostrophes ignored), sympathy aside."""
    text = text.lower().replace("\u2019", "'")
    for phrase in NOT_REFUSALS:
        text = text.replace(phrase, " ")
    return any(phrase in text for phrase in REFUSAL_PHRASES)


def refusal_rate(texts: Sequence[str]) -> float:
    """Fraction of responses that refuse or decline to answer (``is_refusal``)."""
    return sum(map(is_refusal, texts)) / len(texts) if texts else float("nan")
