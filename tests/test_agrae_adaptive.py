"""The two estimators of issue 27: A-GRAE (against hand-computed values of the fork's formula) and adaptive beta (the
controller's law by hand, its trainer integration, and an exact resume)."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from asym_trl import AsymGRPOTrainer, compute_advantages
from asym_trl.apps.tiny import toy_sum_dataset
from asym_trl.method.adaptive import AdaptiveBeta
from asym_trl.method.advantages import agrae_advantages, asym_advantages
from asym_trl.method.estimators import get_estimator

EPS = 1e-6


def agrae_by_hand(groups: list[list[float]], alpha: float = 1.0) -> list[list[float]]:
    """The fork's loop (core_algos.py, grpo_weight = 2.0), one rollout at a time, binary rewards, groups of >= 2."""
    means = [sum(g) / len(g) for g in groups]
    stds = [math.sqrt(sum((r - m) ** 2 for r in g) / (len(g) - 1)) for g, m in zip(groups, means, strict=True)]
    overall = sum(means) / len(means)
    out = []
    for g, m, s in zip(groups, means, stds, strict=True):
        row = []
        for r in g:
            score = (r - m) / (s + EPS)
            diff = 0.5 * score / (math.sqrt(m) + EPS)
            easy = 0.5 * score / (1 - math.sqrt(m) + EPS)
            score = (1 - overall) * easy + overall * diff
            if score > 0:
                score *= min(1, overall / alpha)
            row.append(score)
        out.append(row)
    return out


def test_agrae_matches_the_forks_formula_by_hand():
    groups = [[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0], [0, 1, 0, 0]]
    got = agrae_advantages(torch.tensor(groups, dtype=torch.float64))
    assert torch.allclose(got, torch.tensor(agrae_by_hand(groups), dtype=torch.float64), atol=1e-12)
    # two groups worked on paper: mu 1/4 and 3/4, std 1/2 each, batch accuracy 1/2
    two = agrae_advantages(torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.float64))
    assert two[0, 0].item() == pytest.approx(0.75, abs=1e-5)  # 1.5 * (0.5 / 0.5) -> x min(1, 0.5)
    assert two[0, 1].item() == pytest.approx(-0.5, abs=1e-5)
    easy_and_hard = 0.5 * 0.5 / (1 - math.sqrt(0.75)) + 0.5 * 0.5 / math.sqrt(0.75)  # 2.1547
    assert two[1, 0].item() == pytest.approx(0.5 * easy_and_hard * 0.5, abs=1e-4)  # 0.5387
    assert two[1, 3].item() == pytest.approx(-1.5 * easy_and_hard, abs=1e-4)  # -3.2320 (the epsilons aside)


def test_agrae_alpha_damps_positives_only_while_the_batch_is_weak():
    groups = [[1.0, 0, 0, 0], [0, 1, 0, 0]]  # batch accuracy 1/4
    for alpha in (1.0, 0.5, 0.2):
        got = agrae_advantages(torch.tensor(groups, dtype=torch.float64), agrae_alpha=alpha)
        assert torch.allclose(got, torch.tensor(agrae_by_hand(groups, alpha), dtype=torch.float64), atol=1e-12)
    weak, strong = (agrae_advantages(torch.tensor(groups), agrae_alpha=a) for a in (1.0, 0.2))
    assert torch.allclose(weak[weak < 0], strong[strong < 0])  # negatives untouched
    assert torch.allclose(weak[weak > 0] * 4, strong[strong > 0])  # x 0.25 vs x min(1, 1.25)


def test_agrae_boundaries():
    nan = float("nan")
    rewards = torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0], [1, nan, nan, nan], [nan] * 4, [1, 0, nan, 1]])
    got = agrae_advantages(rewards)
    assert torch.equal(got[:4], torch.zeros(4, 4))  # all-/none-solved, a lone scorable rollout, none scorable
    assert got[4, 2] == 0 and torch.isfinite(got).all()
    # the batch accuracy averages the groups of >= 2 scorable rollouts: (1 + 0 + 2/3) / 3
    alone = agrae_advantages(rewards[4:], batch_accuracy=(1 + 0 + 2 / 3) / 3)
    assert torch.allclose(alone, got[4:])
    # what the asynchronous trainer does: one group at a time, the batch's accuracy given
    batch = torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 0]])
    one = agrae_advantages(batch[1:], batch_accuracy=0.5)
    assert torch.allclose(one, agrae_advantages(batch)[1:])


def test_agrae_in_the_registry_and_compute_advantages():
    est = get_estimator("a_grae")
    assert est.params == ("success_threshold", "agrae_alpha") and est.context == ("batch_accuracy",)
    flat = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 0])
    assert torch.allclose(compute_advantages(flat, 4, "a_grae"), agrae_advantages(flat.view(2, 4)).view(-1))
    # a context value the estimator does not declare is not passed (asym has no batch_accuracy)
    params = dict(beta_pos=0.9, beta_neg=0.4, success_threshold=1.0)
    asym = get_estimator("asym")(flat.view(2, 4), context={"batch_accuracy": 0.1}, **params)
    assert torch.allclose(asym, asym_advantages(flat.view(2, 4), 0.9, 0.4))


# ------------------------------------------------------------------------------------------------- adaptive beta
def test_adaptive_controller_law_by_hand():
    c = AdaptiveBeta(beta_pos=0.9, beta_neg=0.4, target=0.75, step=0.05)
    assert c.target_value() is None
    assert c.update(1.0) == pytest.approx(0.05)  # log(1 / 0.75) = 0.288, clipped to the step
    assert (c.reference, c.target_value()) == (1.0, 0.75)
    assert (c.beta_pos, c.beta_neg) == pytest.approx((0.85, 0.45))
    assert c.update(0.74) == pytest.approx(math.log(0.74 / 0.75))  # -0.0134: inside the step
    assert (c.beta_pos, c.beta_neg) == pytest.approx((0.85 - math.log(0.74 / 0.75), 0.45 + math.log(0.74 / 0.75)))
    for _ in range(100):  # entropy far below target: explore, up to the bounds
        c.update(0.1)
    assert (c.beta_pos, c.beta_neg) == (1.5, 0.0) and c.updates == 102
    assert c.update(float("nan")) == 0 and c.update(0.0) == 0 and c.updates == 102  # no tokens: hold


def test_adaptive_controller_absolute_target_and_state():
    c = AdaptiveBeta(beta_pos=1.0, beta_neg=0.5, target_entropy=0.2, step=1.0, low=0.0, high=2.0)
    c.update(0.4)  # log(2) = 0.693 above target: sharpen
    assert c.target_value() == 0.2 and (c.beta_pos, c.beta_neg) == pytest.approx((1 - math.log(2), 0.5 + math.log(2)))
    copy = AdaptiveBeta(beta_pos=0.0, beta_neg=0.0)
    copy.load_state_dict(c.state_dict())
    assert copy == c


def test_adaptive_config_fields_belong_to_their_estimator(cpu_config):
    args = cpu_config(advantage_estimator="adaptive_beta")
    assert (args.beta_pos, args.beta_neg, args.adaptive_beta_target, args.adaptive_beta_step) == (0.9, 0.4, 0.5, 0.05)
    assert args.adaptive_beta_range == [0.0, 1.5] and args.adaptive_beta_target_entropy is None
    with pytest.raises(ValueError, match="adaptive_beta_target is not used by advantage_estimator='asym'"):
        cpu_config(advantage_estimator="asym", adaptive_beta_target=0.5)
    with pytest.raises(ValueError, match="agrae_alpha is not used"):
        cpu_config(advantage_estimator="grpo", agrae_alpha=0.5)
    with pytest.raises(ValueError, match=r"adaptive_beta_range=\[1.0, 0.5\]"):
        cpu_config(advantage_estimator="adaptive_beta", adaptive_beta_range=[1.0, 0.5])
    with pytest.raises(ValueError, match="beta_pos=0.9 is outside adaptive_beta_range"):
        cpu_config(advantage_estimator="adaptive_beta", adaptive_beta_range=[0.0, 0.5])
    with pytest.raises(ValueError, match="adaptive_beta_step=0.0 is invalid"):
        cpu_config(advantage_estimator="adaptive_beta", adaptive_beta_step=0.0)
    assert cpu_config(advantage_estimator="a_grae", agrae_alpha=0.5).estimator_params["agrae_alpha"] == 0.5


def coin_reward(completions, **kwargs):
    return [float(hashlib.sha256(c[-1]["content"].encode()).digest()[0] % 2) for c in completions]


def adaptive_trainer(tiny_model_path, cpu_config, output_dir, **overrides):
    args = cpu_config(
        advantage_estimator="adaptive_beta",
        adaptive_beta_step=0.2,
        output_dir=str(output_dir),
        max_steps=4,
        **overrides,
    )
    return AsymGRPOTrainer(tiny_model_path, reward_funcs=coin_reward, args=args, train_dataset=toy_sum_dataset(32))


def logged(trainer, key, after: int = 0):
    return [h[key] for h in trainer.state.log_history if key in h and h["step"] > after]


def test_adaptive_beta_trains_with_the_betas_the_controller_sets(tiny_model_path, cpu_config, tmp_path):
    """Each step's betas follow the law from the logged entropies, and the advantages of each generation batch are
    Eq. 10 with the betas in effect when it was scored (the previous step's)."""
    trainer = adaptive_trainer(tiny_model_path, cpu_config, tmp_path / "run")
    scored = []
    rescore = trainer.rescore

    def recording(output, inputs, rewards_per_func):
        out = rescore(output, inputs, rewards_per_func)
        scored.append((rewards_per_func[:, 0].clone(), dict(trainer.adaptive_beta.controller.betas())))
        return out

    trainer.rescore = recording
    trainer.train()
    entropies, pos, neg = (logged(trainer, f"adaptive/{k}") for k in ("entropy", "beta_pos", "beta_neg"))
    assert len(entropies) == len(pos) == 4
    replay = AdaptiveBeta(beta_pos=0.9, beta_neg=0.4, step=0.2)
    for entropy, beta_pos, beta_neg in zip(entropies, pos, neg, strict=True):
        replay.update(entropy)
        assert (beta_pos, beta_neg) == pytest.approx((replay.beta_pos, replay.beta_neg), abs=1e-6)
    assert logged(trainer, "adaptive/target_entropy")[0] == pytest.approx(0.5 * entropies[0], rel=1e-6)
    assert len({round(b, 6) for b in pos}) > 1  # the betas moved
    for rewards, betas in scored:
        advantages = compute_advantages(rewards, 4, "asym", **betas)
        assert torch.isfinite(advantages).all()
    # the second batch was scored with the betas after step 1, not the config's
    assert scored[1][1]["beta_pos"] == pytest.approx(pos[0], abs=1e-6) and scored[0][1]["beta_pos"] == 0.9


def test_adaptive_beta_resumes_exactly(tiny_model_path, cpu_config, tmp_path):
    common = dict(save_strategy="steps", save_steps=2)
    straight = adaptive_trainer(tiny_model_path, cpu_config, tmp_path / "a", **common)
    straight.train()
    checkpoint = tmp_path / "a" / "checkpoint-2"
    assert (checkpoint / "adaptive_beta.json").is_file()
    resumed = adaptive_trainer(tiny_model_path, cpu_config, tmp_path / "b", **common)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.adaptive_beta.controller == straight.adaptive_beta.controller
    for key in ("adaptive/beta_pos", "adaptive/entropy"):
        want = logged(straight, key, after=2)
        assert len(want) == 2 and logged(resumed, key, after=2) == pytest.approx(want, abs=1e-6)
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
