"""The estimators against values computed by hand from the paper's equations."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asym_trl.method.advantages import (
    agrae_advantages,
    asym_advantages,
    dr_grpo_advantages,
    ent_decrease_advantages,
    ent_increase_advantages,
    entropy_shaped_advantages,
    pass_at_k_advantages,
)
from asym_trl.method.estimators import ADVANTAGE_ESTIMATORS, compute_advantages

GROUP_SIZES = range(2, 65)


def group(G: int, k: int) -> torch.Tensor:
    """One group of G binary rewards with k successes first, as float64 (1, G)."""
    return torch.tensor([[1.0] * k + [0.0] * (G - k)], dtype=torch.float64)


def all_groups(G: int) -> torch.Tensor:
    """(G+1, G): row k holds k successes then G-k failures, so column 0 is a success iff k > 0."""
    return torch.cat([group(G, k) for k in range(G + 1)])


def check_every_k(adv: torch.Tensor, G: int, pos_ref, neg_ref):
    """Compare row k's first (success) and last (failure) entries against the scalar references."""
    for k in range(G + 1):
        if k > 0:
            assert adv[k, 0].item() == pytest.approx(pos_ref(k), rel=1e-9, abs=1e-12), (G, k)
        if k < G:
            assert adv[k, -1].item() == pytest.approx(neg_ref(k), rel=1e-9, abs=1e-12), (G, k)


# ---------------------------------------------------------------- scalar references (Eq. 10, 15-18, Chen et al.)
def ref_pos(p, b):
    return ((1 - p) / p) ** b


def ref_neg(p, b):
    return -((p / (1 - p)) ** b)


def ref_flip_pos(p, b, G):  # Eq. 15, 17
    a = (G - 1) / G
    if p <= a:
        return ref_pos(1 - p, b)
    last, prev = ref_pos(1 - a, b), ref_pos(1 - (G - 2) / G, b)
    end = last + (last - prev)
    return last + (end - last) * (p - a) / (1 - a)


def ref_flip_neg(p, b, G):  # Eq. 16, 18
    if p >= 1 / G:
        return ref_neg(1 - p, b)
    first, second = ref_neg(1 - 1 / G, b), ref_neg(1 - 2 / G, b)
    start = first - (second - first)
    return start + (first - start) * p * G


def ref_pass_at_k(N, c, K):
    rho = 1 - math.comb(N - c, K) / math.comb(N, K)
    sigma = math.sqrt(rho * (1 - rho))
    if sigma == 0:
        return 0.0, 0.0
    miss = math.comb(N - c - 1, K - 1) / math.comb(N - 1, K - 1)  # math.comb is 0 when K-1 > N-c-1
    return (1 - rho) / sigma, (1 - rho - miss) / sigma


@pytest.mark.parametrize("beta_pos,beta_neg", [(0.9, 0.4), (0.7, 0.7), (0.5, 0.5), (0.5, 0.0), (0.0, 0.5), (2.5, 1.3)])
def test_asym_matches_eq10_for_every_group_size_and_k(beta_pos, beta_neg):
    for G in GROUP_SIZES:
        adv = asym_advantages(all_groups(G), beta_pos, beta_neg)
        # beta > 0 gives 0 on the boundary (p=1 for positives, p=0 for negatives); beta = 0 gives +-1 (0**0 = 1)
        check_every_k(
            adv,
            G,
            lambda k: ref_pos(k / G, beta_pos) if k < G else float(beta_pos == 0),
            lambda k: ref_neg(k / G, beta_neg) if k > 0 else -float(beta_neg == 0),
        )
        assert adv[G].tolist() == [0.0 if beta_pos else 1.0] * G
        assert adv[0].tolist() == [-0.0 if beta_neg else -1.0] * G


def test_hand_computed_values_g8():
    adv = asym_advantages(group(8, 1), 0.9, 0.4)[0]
    assert adv[0].item() == pytest.approx(7**0.9)  # 5.7622
    assert adv[1].item() == pytest.approx(-((1 / 7) ** 0.4))  # -0.4592
    adv = asym_advantages(group(8, 6), 0.5, 0.5)[0]
    assert adv[0].item() == pytest.approx(math.sqrt(2 / 6))
    assert adv[-1].item() == pytest.approx(-math.sqrt(3))


# Zhu et al. 2025 at beta = (0, 0): (correct, incorrect) advantage in every group, boundaries included.
SIGN_SCALED = {"psr": (1.0, 0.0), "nsr": (0.0, -1.0), "w_reinforce": (0.1, -1.0)}


@pytest.mark.parametrize("name", sorted(SIGN_SCALED))
def test_sign_scaled_reinforce_presets_hand_values(name):
    pos, neg = SIGN_SCALED[name]
    for k in (0, 1, 3, 8):  # none-, one-, some-, all-solved
        want = [pos] * k + [neg] * (8 - k)
        adv = compute_advantages(group(8, k).view(-1), 8, name)
        assert adv.tolist() == want
        assert not adv[adv == 0].signbit().any()  # +0, never -0, where a scale is 0
    r = torch.tensor(
        [1.0, float("nan"), 0.0, 0.5], dtype=torch.float64
    )  # unscorable -> 0; partial credit below 1 is a failure
    assert compute_advantages(r, 4, name).tolist() == [pos, 0.0, neg, neg]


def test_per_sign_scales_multiply_eq10():
    adv = compute_advantages(group(8, 1).view(-1), 8, "asym", scale_pos=2.0, scale_neg=0.5)
    assert adv[0].item() == pytest.approx(2 * 7**0.9)  # 11.5244
    assert adv[1].item() == pytest.approx(-0.5 * (1 / 7) ** 0.4)  # -0.2296
    unit = compute_advantages(all_groups(8).view(-1), 8, "asym")
    assert torch.equal(compute_advantages(all_groups(8).view(-1), 8, "asym", scale_pos=1.0, scale_neg=1.0), unit)


def test_reinforce_is_plus_minus_one_in_every_group_including_boundaries():
    for G in GROUP_SIZES:
        adv = compute_advantages(all_groups(G).view(-1), G, "reinforce")
        assert adv.tolist() == (all_groups(G) * 2 - 1).view(-1).tolist()


def test_grpo_equals_eq4_with_population_std():
    for G in GROUP_SIZES:
        groups = all_groups(G)
        got = compute_advantages(groups.view(-1), G, "grpo").view(G + 1, G)
        for k in range(1, G):
            r = groups[k].tolist()
            mean, std = statistics.fmean(r), statistics.pstdev(r)
            assert got[k].tolist() == pytest.approx([(x - mean) / std for x in r], rel=1e-12)
        assert got[0].abs().sum() == 0 and got[G].abs().sum() == 0


def test_trl_grpo_formula_is_ours_times_sqrt_g_minus_1_over_g():
    """TRL 1.16 (and verl): (r - mean) / (sample std + 1e-4). Ours uses the population std."""
    for G in (2, 4, 8, 16, 64):
        for k in range(1, G):
            r = torch.tensor([1.0] * k + [0.0] * (G - k), dtype=torch.float64)
            trl = (r - r.mean()) / (r.std(unbiased=True) + 1e-4)
            ours = compute_advantages(r, G, "grpo")
            assert torch.allclose(trl, ours * math.sqrt((G - 1) / G), rtol=1e-3)
            if G == 8:  # the factor the README quotes
                assert (trl / ours).tolist() == pytest.approx([0.935] * G, abs=1e-3)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_sample_std_is_trl_exactly_for_any_rewards(scale):
    """grpo_std='sample' is TRL 1.16's sum_then_normalize formula, NaN (None) rewards and scale_rewards included."""
    from trl.trainer.utils import nanstd

    r = torch.tensor([[0.3, 2.5, float("nan"), 7.0], [1.0, 1.0, 1.0, 1.0], [float("nan")] * 3 + [4.0]])
    centred = r - torch.nanmean(r, dim=1, keepdim=True)
    std = {"group": nanstd(r, dim=1, keepdim=True), "batch": nanstd(r), "none": None}[scale]
    trl = torch.nan_to_num(centred if std is None else centred / (std + 1e-4), nan=0.0)
    got = compute_advantages(r.view(-1), 4, "grpo", grpo_std="sample", scale_rewards=scale).view(3, 4)
    assert torch.allclose(got, trl, atol=1e-6)
    population = compute_advantages(r.view(-1), 4, "grpo", scale_rewards=scale).view(3, 4)
    assert (population[1] == 0).all() and (population[2] == 0).all() and population[0, 2] == 0
    if scale == "group":  # (r - mean) / pstd: mean 0, unit population variance over the scorable rollouts
        valid = population[0, [0, 1, 3]]
        assert valid.mean().abs() < 1e-6 and (valid.pow(2).mean() - 1).abs() < 1e-5


def test_presets_are_members_of_eq10():
    r = torch.tensor([1, 0, 0, 1, 1, 0, 1, 1.0])
    for name, (bp, bn) in {
        "reinforce": (0, 0),
        "grpo": (0.5, 0.5),
        "pos_only": (0.5, 0),
        "neg_only": (0, 0.5),
    }.items():
        want = compute_advantages(r, 8, "asym", beta_pos=bp, beta_neg=bn)
        assert torch.allclose(compute_advantages(r, 8, name), want, rtol=1e-6), name  # grpo: (r - mean) / pstd


def test_flipped_boundary_values_g8():
    # App. D: V = 2*sqrt(7) - sqrt(3) = 3.5595 at G = 8
    v = 2 * math.sqrt(7) - math.sqrt(3)
    assert ent_increase_advantages(group(8, 0))[0].tolist() == pytest.approx([-v] * 8)
    assert ent_decrease_advantages(group(8, 8))[0].tolist() == pytest.approx([v] * 8)
    assert ent_decrease_advantages(group(8, 8))[0, 0].item() == pytest.approx(3.5595, abs=1e-4)  # DESIGN's value


@pytest.mark.parametrize("beta", [0.5, 0.3, 1.0])
def test_flipped_curves_for_every_group_size_and_k(beta):
    for G in GROUP_SIZES:
        dec = ent_decrease_advantages(all_groups(G), beta, beta)
        inc = ent_increase_advantages(all_groups(G), beta, beta)
        check_every_k(dec, G, lambda k: ref_flip_pos(k / G, beta, G), lambda k: ref_neg(k / G, beta))
        check_every_k(inc, G, lambda k: ref_pos(k / G, beta), lambda k: ref_flip_neg(k / G, beta, G))


def test_flipped_curve_is_the_reflection_inside_the_domain():
    # A~(p) = A(1-p): EntDecrease positives at p equal GRPO positives at 1-p
    for k in range(1, 8):
        dec = ent_decrease_advantages(group(8, k))[0, 0]
        grpo = asym_advantages(group(8, 8 - k), 0.5, 0.5)[0, 0]
        assert dec.item() == pytest.approx(grpo.item())


def test_pass_at_k_closed_form_for_every_group_size_and_k():
    for G in GROUP_SIZES:
        for K in sorted({1, 2, 5, G // 2, G} & set(range(1, G + 1))):
            adv = pass_at_k_advantages(all_groups(G), K)
            check_every_k(adv, G, lambda c: ref_pass_at_k(G, c, K)[0], lambda c: ref_pass_at_k(G, c, K)[1])


def test_pass_at_k_hand_values():
    # N=8, c=2, K=5: rho = 1 - C(6,5)/C(8,5) = 1 - 6/56
    rho = 1 - 6 / 56
    sigma = math.sqrt(rho * (1 - rho))
    adv = pass_at_k_advantages(group(8, 2), 5)[0]
    assert adv[0].item() == pytest.approx((1 - rho) / sigma)
    assert adv[-1].item() == pytest.approx((1 - rho - 5 / 35) / sigma)  # C(5,4)/C(7,4) = 5/35


def test_dr_grpo_is_mean_centred_raw_reward():
    r = torch.tensor([[0.5, 1.0, 0.0, 0.25]])
    assert dr_grpo_advantages(r)[0].tolist() == pytest.approx([0.0625, 0.5625, -0.4375, -0.1875])


def test_nan_rewards_are_excluded_from_p_and_get_zero():
    r = torch.tensor([[1.0, float("nan"), 0.0, 0.0]])  # p = 1/3 over the scorable three
    adv = asym_advantages(r, 0.5, 0.5)[0]
    assert adv[1].item() == 0.0
    assert adv[0].item() == pytest.approx(math.sqrt(2))
    assert adv[2].item() == pytest.approx(-math.sqrt(0.5))
    assert dr_grpo_advantages(r)[0].tolist() == pytest.approx([2 / 3, 0.0, -1 / 3, -1 / 3])
    all_nan = torch.full((1, 4), float("nan"))
    for name, fn in ADVANTAGE_ESTIMATORS.items():
        out = fn(all_nan, beta_pos=0.5, beta_neg=0.5, success_threshold=1.0, pass_at_k=2)
        assert out.tolist() == [[0.0] * 4], name


def test_success_threshold_binarises_partial_credit():
    r = torch.tensor([[1.1, 0.9, 0.5, 0.0]])  # accuracy + format bonus, partial credit
    adv = asym_advantages(r, 0.5, 0.5, success_threshold=1.0)[0]  # one success: p = 1/4
    assert adv.tolist() == pytest.approx([math.sqrt(3), -math.sqrt(1 / 3), -math.sqrt(1 / 3), -math.sqrt(1 / 3)])
    adv = asym_advantages(r, 0.5, 0.5, success_threshold=0.5)[0]  # three successes: p = 3/4
    assert adv.tolist() == pytest.approx([math.sqrt(1 / 3)] * 3 + [-math.sqrt(3)])


def test_entropy_shaped_advantages_cheng_et_al():
    adv = torch.tensor([1.0, -1.0])
    ent = torch.tensor([[0.5, 3.0], [0.5, 3.0]], requires_grad=True)
    out = entropy_shaped_advantages(adv, ent, alpha=0.4, kappa=2.0)
    # min(0.4*0.5, 0.5) = 0.2; min(0.4*3, 0.5) = 0.5 (capped at |A|/kappa)
    assert torch.allclose(out, torch.tensor([[1.2, 1.5], [-0.8, -0.5]]))
    assert not out.requires_grad


def test_compute_advantages_validates_its_input():
    with pytest.raises(ValueError, match="unknown advantage estimator 'nope'"):
        compute_advantages(torch.zeros(8), 4, "nope")
    with pytest.raises(ValueError, match="multiple of num_generations=3"):
        compute_advantages(torch.zeros(8), 3)


def test_vectorised_over_groups_matches_one_group_at_a_time():
    torch.manual_seed(0)
    r = (torch.rand(50, 8) < 0.4).double()
    for name, estimator in ADVANTAGE_ESTIMATORS.items():
        batched = compute_advantages(r.view(-1), 8, name).view(50, 8)
        for i in range(50):
            if "batch_accuracy" in estimator.context:  # A-GRAE reads the batch: one group alone, given the batch's
                one = agrae_advantages(r[i : i + 1], batch_accuracy=r.mean()).view(-1)
                assert torch.allclose(batched[i], one, rtol=1e-12, atol=1e-12), name
                continue
            assert torch.equal(batched[i], compute_advantages(r[i], 8, name)), name


# ---------------------------------------------------------------- properties
rewards_st = st.integers(2, 64).flatmap(
    lambda G: st.lists(st.sampled_from([0.0, 1.0, float("nan"), 0.5]), min_size=G, max_size=G)
)
beta_st = st.floats(0.0, 3.0)


@settings(max_examples=300, deadline=None)
@given(rewards_st, beta_st, beta_st, st.sampled_from(sorted(ADVANTAGE_ESTIMATORS)), st.integers(1, 8))
def test_finite_for_any_group_and_beta(rewards, beta_pos, beta_neg, name, k):
    r = torch.tensor([rewards], dtype=torch.float64)
    adv = ADVANTAGE_ESTIMATORS[name](
        r, beta_pos=beta_pos, beta_neg=beta_neg, success_threshold=1.0, pass_at_k=min(k, len(rewards))
    )
    assert torch.isfinite(adv).all()
    assert (adv[torch.isnan(r)] == 0).all()


@settings(max_examples=300, deadline=None)
@given(rewards_st, beta_st, beta_st, st.sampled_from(sorted(ADVANTAGE_ESTIMATORS)))
def test_sign_matches_correctness_except_where_zero(rewards, beta_pos, beta_neg, name):
    r = torch.tensor([rewards], dtype=torch.float64)
    adv = ADVANTAGE_ESTIMATORS[name](r, beta_pos=beta_pos, beta_neg=beta_neg, success_threshold=1.0, pass_at_k=1)[0]
    if name in ("dr_grpo", "grpo"):  # sign of r - mean, on raw rewards
        success = r[0] > torch.nanmean(r[0])
    else:
        success = r[0] >= 1.0
    valid = ~torch.isnan(r[0])
    nonzero = valid & (adv != 0)
    assert (adv[nonzero & success] > 0).all()
    assert (adv[nonzero & ~success] < 0).all()
