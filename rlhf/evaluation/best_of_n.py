"""Best-of-n: the reference method of Gao et al. 2022 (*Scaling laws for reward model over-optimization*).

Sample n responses from the policy, keep the one the proxy reward model scores highest. Its KL to the
policy it samples from has a closed form, so best-of-n places points on the over-optimisation curve
(score vs sqrt(KL)) without any training. :mod:`rlhf.evaluation.evaluate` does the sampling and scoring.
"""
from __future__ import annotations

import math
from typing import Sequence


def analytic_kl(n: int) -> float:
    """KL(best-of-n || policy) = log n - (n - 1) / n nats (Stiennon et al. 2020; Gao et al. 2022).

    Exact when the n samples are distinct; an upper bound when they can repeat (Beirami et al. 2024).
    """
    if n < 1:
        raise ValueError(f"best_of_n: n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def choose_best(scores: Sequence[Sequence[float]], n: int) -> list[int]:
    """Per prompt, the index of the highest score among its first ``n`` samples (the first one on a tie).

    Taking the first n of one larger draw makes the n's nested: best-of-2n never keeps a worse sample
    than best-of-n, and every n costs no new samples.
    """
    if n < 1:
        raise ValueError(f"best_of_n: n must be >= 1, got {n}")
    picks = []
    for row in scores:
        if len(row) < n:
            raise ValueError(f"best_of_n: {n} samples asked for, {len(row)} drawn")
        picks.append(max(range(n), key=lambda j: (row[j], -j)))
    return picks
