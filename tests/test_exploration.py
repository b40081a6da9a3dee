"""pass@k and the distinct-solution counter against hand-computed cases; the countdown task's verifier."""

import math

import pytest

from asym_trl.apps.countdown import canonical, countdown_reward, solutions
from asym_trl.diagnostics.exploration import distinct_correct, mean_distinct_at_k, mean_pass_at_k, pass_at_k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 1, 1 / 4),  # pass@1 = c/n
        (4, 1, 2, 1 - 3 / 6),  # 1 - C(3,2)/C(4,2)
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (4, 0, 4, 0.0),
        (4, 1, 4, 1.0),  # n - c < k: every k-subset holds the correct one
        (64, 64, 1, 1.0),
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_is_the_binomial_formula():
    for n, c, k in [(64, 5, 16), (64, 1, 64), (32, 10, 3)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, 1, 0), (4, 1, 5), (3, -1, 1)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k():
    correct = [[True, False], [False, False]]
    assert mean_pass_at_k(correct, [1, 2]) == {1: pytest.approx(0.25), 2: pytest.approx(0.5)}


def test_distinct_correct_counts_canonical_classes_of_correct_samples():
    texts = ["3*5+8", "8+5*3", "(3*5)+8", "8*3-1", "2*8+7", "garbage"]
    correct = [True, True, True, True, False, False]
    assert distinct_correct(texts, correct, canonical) == 2  # {8+3*5, 3*8-1}; the incorrect ones never count
    assert distinct_correct(texts, [False] * 6, canonical) == 0
    assert distinct_correct(["a", "A", "b"], [True] * 3, str.lower) == 2


def test_mean_distinct_at_k_uses_the_first_k_samples():
    texts = [["a", "a", "b", "c"], ["x", "y", "y", "y"]]
    correct = [[True, True, True, False], [False, True, True, True]]
    assert mean_distinct_at_k(texts, correct, [1, 2, 3, 4], str) == {1: 0.5, 2: 1.0, 3: 1.5, 4: 1.5}


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("3*5+8", "8+5*3", True),
        ("(3*5)+8", "3*5+8", True),
        ("8-(3-5)", "5+8-3", True),
        ("(8+1)*2", "2*(1+8)", True),
        ("3*5+8", "3*(5+8)", False),
        ("8-3+5", "8-5+3", False),
    ],
)
def test_canonical_form(a, b, same):
    assert (canonical(a) == canonical(b)) is same


def test_countdown_reward_and_solutions():
    gold = ["2,3,5,8=23"] * 6
    texts = ["3*5+8", "5*3+8 ", "3*5-8", "3*5+8+0", "3*5+2", "__import__('os')"]
    assert countdown_reward(texts, gold) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    found = solutions((2, 3, 5, 8), 23)
    assert "3*5+8" in found or "5*3+8" in found
    assert len({canonical(s) for s in found}) == len(found)  # one representative per distinct solution
    assert countdown_reward(list(found), ["2,3,5,8=23"] * len(found)) == [1.0] * len(found)
