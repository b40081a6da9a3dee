"""Statistics for comparing training methods over a handful of seeds (the testbed study, ``docs/testbed.md``).

A claim "method a beats method b on a metric" is tested on the same-seed differences ``d_i = a_i - b_i`` (the two
runs of seed ``i`` share the data order and the sampling seed, so pairing removes what the seed does to both):

- :func:`paired_t`: the mean difference, its 95 % t confidence interval and the two-sided p-value of the paired
  t-test (Student 1908; valid at any n >= 2 for differences that are roughly normal, unlike a percentile bootstrap,
  which is too liberal at 5-10 seeds).
- :func:`holm`: Holm's step-down adjustment of a family of p-values (Holm 1979), which controls the family-wise
  error rate under any dependence between the claims.
- :func:`verdict`: the fixed rule that turns an adjusted p-value and the effect's sign into a word.

The t distribution's CDF is the regularized incomplete beta function (Numerical Recipes §6.4, Lentz's continued
fraction), written here so that the study needs no SciPy; ``tests/test_seed_stats.py`` checks it against tabled
quantiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PairedTest", "holm", "paired_t", "student_t_cdf", "student_t_quantile", "verdict"]

ALPHA = 0.05


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz), converged to 1e-15."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # fmt: skip
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0.0 or x >= 1.0:
        return max(0.0, min(1.0, x))
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t (bisection on :func:`student_t_cdf`, to 1e-10)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    low, high = -1e3, 1e3
    while high - low > 1e-10:
        mid = (low + high) / 2
        low, high = (mid, high) if student_t_cdf(mid, df) < q else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class PairedTest:
    """The paired t-test of ``n`` same-seed differences: mean, 95 % CI, t statistic and two-sided p."""

    n: int
    mean: float
    ci_low: float
    ci_high: float
    t: float
    p: float


def paired_t(diffs: Sequence[float], confidence: float = 0.95) -> PairedTest:
    """The paired t-test of ``diffs`` against 0 (two-sided) and the t interval of their mean; needs n >= 2.

    All-equal differences have no spread: p = 1 when they are all 0, else 0 (a deterministic effect)."""
    n = len(diffs)
    if n < 2:
        raise ValueError(f"a paired t-test needs >= 2 paired seeds, got {n}")
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0.0:
        return PairedTest(n, mean, mean, mean, 0.0 if mean == 0 else math.copysign(math.inf, mean), float(mean == 0))
    se = sd / math.sqrt(n)
    t = mean / se
    half = student_t_quantile(0.5 + confidence / 2, n - 1) * se
    return PairedTest(n, mean, mean - half, mean + half, t, 2.0 * student_t_cdf(-abs(t), n - 1))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order: the i-th smallest p times (m - i + 1), made monotone, capped at 1.
    A claim is rejected at family-wise level alpha when its adjusted p is below alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def verdict(adjusted_p: float, mean: float, predicted_sign: int, alpha: float = ALPHA) -> str:
    """The study's fixed rule: ``supported`` when the Holm-adjusted p is below ``alpha`` and the mean difference
    has the predicted sign, ``contradicted`` when it is below ``alpha`` with the other sign, else ``not shown``
    (the data cannot tell at this number of seeds: neither a confirmation nor a refutation)."""
    if adjusted_p < alpha:
        return "supported" if mean * predicted_sign > 0 else "contradicted"
    return "not shown"
