"""The study's statistics (asym_trl/diagnostics/seed_stats.py) against tabled and hand-computed values."""

import math

import pytest

from asym_trl.diagnostics.seed_stats import holm, paired_t, student_t_cdf, student_t_quantile, verdict


@pytest.mark.parametrize(
    ("df", "q", "expected"),  # Student's t table (two-sided 5 % / 10 % / 1 % critical values)
    [(1, 0.975, 12.706), (2, 0.95, 2.920), (7, 0.975, 2.365), (9, 0.975, 2.262), (15, 0.975, 2.131),
     (15, 0.995, 2.947), (30, 0.995, 2.750), (120, 0.975, 1.980)],
)  # fmt: skip
def test_t_quantiles_match_the_table(df, q, expected):
    assert student_t_quantile(q, df) == pytest.approx(expected, abs=1e-3)
    assert student_t_cdf(expected, df) == pytest.approx(q, abs=2e-4)


def test_t_cdf_closed_forms():
    assert student_t_cdf(0.0, 5) == 0.5
    assert student_t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-12)  # Cauchy: 1/2 + atan(1)/pi
    t = -2.0  # df = 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    assert student_t_cdf(3.0, 4) + student_t_cdf(-3.0, 4) == pytest.approx(1.0, abs=1e-12)


def test_paired_t_by_hand():
    # d = 0.1, 0.2, 0.15, 0.05: mean 0.125, sd = sqrt(0.0125 / 3), se = sd / 2, t = 0.125 / se = 3.873
    test = paired_t([0.1, 0.2, 0.15, 0.05])
    se = math.sqrt(0.0125 / 3) / 2
    assert test.n == 4 and test.mean == pytest.approx(0.125)
    assert test.t == pytest.approx(0.125 / se)
    assert test.p == pytest.approx(2 * student_t_cdf(-0.125 / se, 3))
    assert 0.01 < test.p < 0.05  # |t| = 3.87 lies between the 5 % (3.182) and 1 % (5.841) values at df 3
    assert (test.ci_low, test.ci_high) == pytest.approx((0.125 - 3.1824 * se, 0.125 + 3.1824 * se), abs=1e-4)


def test_paired_t_degenerate_cases():
    assert paired_t([0.0, 0.0, 0.0]).p == 1.0
    assert paired_t([0.2, 0.2]).p == 0.0  # the same nonzero effect on every seed
    with pytest.raises(ValueError, match="needs >= 2 paired seeds"):
        paired_t([0.1])


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # 0.5 x 2 capped at 1; 0.9 x 1 raised to 1 (monotone)
    assert holm([]) == []


def test_verdict_rule():
    assert verdict(0.01, +0.2, +1) == "supported"
    assert verdict(0.01, -0.2, +1) == "contradicted"
    assert verdict(0.2, +0.2, +1) == "not shown"
    assert verdict(0.01, -0.2, -1) == "supported"
