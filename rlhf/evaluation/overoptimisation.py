"""Gao et al. (2022)'s functional forms of the gold reward against d = sqrt(KL), fitted by least squares.

best-of-n:  R(d) = d (alpha - beta d)        RL:  R(d) = d (alpha - beta log d)

R is the gold score's gain over the method's start (the point at KL 0: best-of-1, or the baseline policy an
RL curve starts from), since both forms are 0 at d = 0. Both are linear in (alpha, beta): R = alpha x1 + beta x2
with x1 = d and x2 = -d^2 (best-of-n) or -d log d (RL; 0 at d = 0), so the fit is the 2x2 normal equations,
no intercept. R^2 = 1 - SS_res / SS_tot, SS_tot about the mean of R (the usual definition; it can be < 0 when
the forms fit worse than a constant). With two points at d > 0 the fit is exact (R^2 = 1 says nothing).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

Form = Literal["best-of-n", "rl"]


@dataclass(frozen=True)
class GaoFit:
    form: Form
    alpha: float
    beta: float
    r2: float
    points: int  # points fitted (the start included)

    def __call__(self, d: float) -> float:
        """The fitted gain R(d)."""
        return self.alpha * d + self.beta * _x2(self.form, d)


def _x2(form: Form, d: float) -> float:
    if form == "best-of-n":
        return -d * d
    return -d * math.log(d) if d > 0 else 0.0  # d log d -> 0 as d -> 0


def fit_gao(d: Sequence[float], gain: Sequence[float], form: Form) -> GaoFit | None:
    """Least-squares (alpha, beta) of ``form`` to gains ``gain`` at ``d`` = sqrt(KL); None when the two
    columns are (numerically) dependent, e.g. fewer than two distinct d > 0 (or, for RL, the one at d = 1)."""
    x1, x2 = list(d), [_x2(form, x) for x in d]
    s11, s22, s12 = sum(a * a for a in x1), sum(b * b for b in x2), sum(a * b for a, b in zip(x1, x2))
    s1y, s2y = sum(a * y for a, y in zip(x1, gain)), sum(b * y for b, y in zip(x2, gain))
    det = s11 * s22 - s12 * s12
    if not math.isfinite(det) or abs(det) <= 1e-12 * max(s11 * s22, 1e-300):
        return None
    alpha, beta = (s1y * s22 - s2y * s12) / det, (s2y * s11 - s1y * s12) / det
    fit = GaoFit(form, alpha, beta, float("nan"), len(x1))
    mean = sum(gain) / len(gain)
    ss_tot = sum((y - mean) ** 2 for y in gain)
    ss_res = sum((y - fit(x)) ** 2 for x, y in zip(x1, gain))
    return GaoFit(form, alpha, beta, 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"), len(x1))


def form_of(method: str) -> Form:
    """Best-of-n curves take the best-of-n form; every other method (RL checkpoints, DPO) the RL form."""
    return "best-of-n" if method.startswith("best-of-n") else "rl"


def fit_curves(points) -> dict[str, tuple[GaoFit, float]]:
    """Per method of ``points`` (``rlhf.evaluation.report.CurvePoint``s) with a gold at KL 0: (its fit, the gold at the
    start, which the fitted gains sit on)."""
    fits = {}
    for method in dict.fromkeys(p.method for p in points):
        mine = [p for p in points if p.method == method and p.gold is not None and math.isfinite(p.gold)]
        start = next((p.gold for p in mine if p.kl == 0.0), None)
        if start is None:
            continue
        fit = fit_gao([math.sqrt(max(p.kl, 0.0)) for p in mine], [p.gold - start for p in mine], form_of(method))
        if fit is not None:
            fits[method] = (fit, start)
    return fits


def fit_lines(fits: dict[str, tuple[GaoFit, float]]) -> list[str]:
    """One sentence per method: the form, alpha, beta, R^2 and the number of points."""
    return [f"{method}: R(d) = d(α − β{' d' if fit.form == 'best-of-n' else ' log d'}), α = {fit.alpha:.4f}, "
            f"β = {fit.beta:.4f}, R² = {fit.r2:.3f} on {fit.points} points (gold gain over the start at d = 0)"
            for method, (fit, _) in fits.items()]
