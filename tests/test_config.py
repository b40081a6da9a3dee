"""AsymGRPOConfig resolves presets and rejects bad values before any model is loaded."""

from __future__ import annotations

import pytest

from asym_trl import AsymGRPOConfig

BASE = dict(output_dir="unused", use_cpu=True, bf16=False, report_to="none", per_device_train_batch_size=8)


def make(**kw):
    return AsymGRPOConfig(**{**BASE, **kw})


@pytest.mark.parametrize(
    "estimator,expected",
    [
        ("asym", (0.9, 0.4)),
        ("reinforce", (0.0, 0.0)),
        ("grpo", (0.5, 0.5)),
        ("pos_only", (0.5, 0.0)),
        ("neg_only", (0.0, 0.5)),
        ("ent_decrease", (0.5, 0.5)),
        ("ent_increase", (0.5, 0.5)),
        ("psr", (0.0, 0.0)),
        ("nsr", (0.0, 0.0)),
        ("w_reinforce", (0.0, 0.0)),
    ],
)
def test_beta_defaults_per_estimator(estimator, expected):
    args = make(advantage_estimator=estimator)
    assert (args.beta_pos, args.beta_neg) == expected


@pytest.mark.parametrize(
    "estimator,expected",
    [
        ("asym", (1.0, 1.0)),
        ("reinforce", (1.0, 1.0)),
        ("psr", (1.0, 0.0)),
        ("nsr", (0.0, 1.0)),
        ("w_reinforce", (0.1, 1.0)),
        ("grpo", (None, None)),  # TRL's GRPO reads no scale
        ("ent_decrease", (None, None)),
    ],
)
def test_scale_defaults_per_estimator(estimator, expected):
    args = make(advantage_estimator=estimator)
    assert (args.scale_pos, args.scale_neg) == expected


def test_asym_takes_free_scales():
    args = make(advantage_estimator="asym", beta_pos=0.0, beta_neg=0.0, scale_pos=0.1)
    assert (args.beta_pos, args.beta_neg, args.scale_pos, args.scale_neg) == (0.0, 0.0, 0.1, 1.0)  # = w_reinforce


def test_asym_takes_free_betas_and_a_preset_accepts_its_own():
    args = make(advantage_estimator="asym", beta_pos=0.7, beta_neg=0.7)
    assert (args.beta_pos, args.beta_neg) == (0.7, 0.7)
    assert make(advantage_estimator="grpo", beta_pos=0.5).beta_pos == 0.5


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(advantage_estimator="ppo"), "advantage_estimator='ppo' is unknown"),
        (dict(beta_pos=-0.1), "beta_pos=-0.1 is invalid"),
        (dict(beta_neg=float("nan")), "beta_neg=nan is invalid"),
        (dict(scale_pos=-1.0), "scale_pos=-1.0 is invalid"),
        (dict(scale_neg=float("inf")), "scale_neg=inf is invalid"),
        (dict(scale_pos=0.0, scale_neg=0.0), "scale_pos = scale_neg = 0 makes every advantage 0"),
        (dict(advantage_estimator="w_reinforce", scale_pos=0.5), "scale_pos=0.5 conflicts with advantage_estimator="),
        (dict(advantage_estimator="psr", beta_pos=0.5), "beta_pos=0.5 conflicts with advantage_estimator='psr'"),
        (dict(advantage_estimator="grpo", scale_neg=2.0), "scale_neg is not used by advantage_estimator='grpo'"),
        (dict(advantage_estimator="ent_decrease", scale_pos=2.0), "scale_pos is not used"),
        (dict(advantage_estimator="grpo", beta_pos=0.9), "beta_pos=0.9 conflicts with advantage_estimator='grpo'"),
        (dict(advantage_estimator="dr_grpo", beta_neg=0.4), "beta_neg is not used by advantage_estimator='dr_grpo'"),
        (dict(advantage_estimator="pass_at_k", beta_pos=0.4), "beta_pos is not used"),
        (dict(advantage_estimator="pass_at_k", pass_at_k=9, num_generations=8), "pass_at_k=9 must satisfy"),
        (dict(advantage_estimator="pass_at_k", pass_at_k=0), "pass_at_k=0 must satisfy"),
        (dict(advantage_estimator="dr_grpo", success_reward_func="acc"), "success_reward_func is not used"),
        (dict(success_threshold=float("inf")), "success_threshold=inf"),
        (dict(entropy_adv_alpha=-1.0), "entropy_adv_alpha=-1.0"),
        (dict(entropy_adv_kappa=0.0), "entropy_adv_kappa=0.0"),
        (dict(entropy_adv_kappa=1.0), "entropy_adv_kappa=1.0 must be a finite number > 1"),
        (dict(entropy_scope="tokens"), "entropy_scope='tokens' is unknown"),
        (dict(entropy_scope="positive"), "entropy_scope='positive' has no effect with entropy_coef=0"),
        (
            dict(entropy_scope="negative", entropy_coef=0.01, use_adaptive_entropy=True),
            "cannot be combined with use_adaptive_entropy",
        ),
        (dict(scale_rewards="batch"), "scale_rewards='batch'"),
        (dict(scale_rewards="none"), "scale_rewards='none' is ignored by advantage_estimator='asym'"),
        (dict(advantage_estimator="reinforce", scale_rewards="none"), "ignored by advantage_estimator='reinforce'"),
        (dict(multi_objective_aggregation="normalize_then_sum"), "multi_objective_aggregation='normalize_then_sum'"),
        (dict(advantage_estimator="ent_increase", num_generations_eval=1), "num_generations_eval=1"),
    ],
)
def test_bad_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        make(**kwargs)


def test_trl_fields_pass_through():
    args = make(epsilon_high=0.28, entropy_coef=0.001, loss_type="dr_grpo")
    assert (args.epsilon_high, args.entropy_coef, args.loss_type) == (0.28, 0.001, "dr_grpo")


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo"])
def test_scale_rewards_none_is_accepted_where_it_has_a_meaning(estimator):
    assert make(advantage_estimator=estimator, scale_rewards="none").scale_rewards == "none"
