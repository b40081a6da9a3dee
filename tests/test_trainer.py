"""AsymGRPOTrainer end to end on the tiny offline model."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer

from asym_trl import AsymGRPOConfig, AsymGRPOTrainer, compute_advantages
from asym_trl.apps.tiny import toy_sum_dataset


def coin_reward(completions, **kwargs):
    """Deterministic ~50% binary reward from the completion text: groups with mixed outcomes."""
    return [float(hashlib.sha256(c[-1]["content"].encode()).digest()[0] % 2) for c in completions]


def positional_reward(k: int, G: int):
    """Reward 1 for the first k rollouts of every group: every group has p = k/G (single process)."""

    def reward(completions, **kwargs):
        return [float(i % G < k) for i in range(len(completions))]

    return reward


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


ESTIMATOR_ARGS = {
    "asym": {},
    "reinforce": {},
    "grpo": {},
    "pos_only": {},
    "neg_only": {},
    "ent_decrease": {},
    "ent_increase": {},
    "pass_at_k": dict(pass_at_k=2),
    "dr_grpo": dict(loss_type="dr_grpo", scale_rewards="none"),
    "a_grae": {},
}


@pytest.mark.parametrize("estimator", sorted(ESTIMATOR_ARGS))
def test_each_estimator_trains_and_changes_weights(estimator, tiny_model_path, cpu_config):
    args = cpu_config(advantage_estimator=estimator, **ESTIMATOR_ARGS[estimator])
    trainer = AsymGRPOTrainer(tiny_model_path, reward_funcs=coin_reward, args=args, train_dataset=toy_sum_dataset(32))
    before = params(trainer.model)
    trainer.train()
    after = params(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    # the completions table holds our advantages, recomputed from the logged rewards
    rewards = torch.tensor(list(trainer._logs["rewards"]["coin_reward"]))
    logged = torch.tensor(list(trainer._logs["advantages"]))
    expected = compute_advantages(rewards, 4, estimator, beta_pos=args.beta_pos, beta_neg=args.beta_neg, pass_at_k=2)
    assert torch.allclose(logged, expected.float(), atol=1e-6)


def side_by_side(tiny_model_path, cpu_config, reward_funcs, G=4, trl_kwargs=None, **ours_kwargs):
    """One step of AsymGRPOTrainer(grpo) and of TRL's GRPOTrainer: same seed, data, rollouts."""
    common = dict(num_generations=G, max_steps=1, **(trl_kwargs or {}))
    ours = AsymGRPOTrainer(
        tiny_model_path,
        reward_funcs=reward_funcs,
        args=cpu_config(advantage_estimator="grpo", **common, **ours_kwargs),
        train_dataset=toy_sum_dataset(32),
    )
    ours.train()
    trl_args = GRPOConfig(
        **{f: getattr(ours.args, f) for f in ("output_dir", "seed", "max_completion_length")},
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        **common,
    )
    theirs = GRPOTrainer(tiny_model_path, reward_funcs=reward_funcs, args=trl_args, train_dataset=toy_sum_dataset(32))
    theirs.train()
    assert list(ours._logs["completion"]) == list(theirs._logs["completion"])  # same seed, same rollouts
    ours_adv = torch.tensor(list(ours._logs["advantages"]))
    theirs_adv = torch.tensor(list(theirs._logs["advantages"]))
    return ours, theirs, ours_adv, theirs_adv


def test_grpo_preset_matches_trl_grpo_up_to_the_std_convention(tiny_model_path, cpu_config):
    """Same seed, same data: TRL's advantages, first loss and first gradient are ours x pstd/(sstd + 1e-4).

    Every group has p = k/G, so the factor is one number.  At ratio 1 the loss and its gradient are linear in
    the advantages (the loss itself is ~0 here: centred advantages over equal-length completions).
    """
    G, k = 4, 1
    ours, theirs, ours_adv, theirs_adv = side_by_side(tiny_model_path, cpu_config, positional_reward(k, G), G)
    r = torch.tensor([1.0] * k + [0.0] * (G - k))
    scale = (r.std(unbiased=False) / (r.std(unbiased=True) + 1e-4)).item()
    assert torch.allclose(theirs_adv, ours_adv * scale, rtol=1e-5)
    assert torch.allclose(theirs_adv, ours_adv * math.sqrt((G - 1) / G), rtol=1e-3)  # the documented factor
    first_ours, first_theirs = ours.state.log_history[0], theirs.state.log_history[0]
    assert first_theirs["loss"] == pytest.approx(first_ours["loss"] * scale, abs=1e-6)
    assert first_ours["grad_norm"] > 0
    assert first_theirs["grad_norm"] == pytest.approx(first_ours["grad_norm"] * scale, rel=1e-4)


def length_reward(completions, **kwargs):
    return [float(len(c[-1]["content"])) for c in completions]


def half_none_reward(completions, **kwargs):
    return [None if i % 3 == 0 else 0.1 * i for i in range(len(completions))]


@pytest.mark.parametrize(
    "case",
    [
        dict(reward_funcs=length_reward),
        dict(reward_funcs=[length_reward, half_none_reward, coin_reward], trl_kwargs=dict(reward_weights=[0.1, 2, 1])),
        dict(reward_funcs=length_reward, trl_kwargs=dict(scale_rewards="batch")),
        dict(reward_funcs=length_reward, trl_kwargs=dict(scale_rewards="none")),
    ],
    ids=["continuous", "weighted_with_none", "scale_batch", "scale_none"],
)
def test_grpo_sample_std_is_trl_grpo_exactly_for_any_reward(case, tiny_model_path, cpu_config):
    """grpo_std='sample': TRL's advantages, loss, grad-norm and log keys, for continuous, weighted, None rewards."""
    ours, theirs, ours_adv, theirs_adv = side_by_side(tiny_model_path, cpu_config, grpo_std="sample", **case)
    assert theirs_adv.abs().sum() > 0
    assert torch.allclose(ours_adv, theirs_adv, rtol=1e-5, atol=1e-6)
    first_ours, first_theirs = ours.state.log_history[0], theirs.state.log_history[0]
    assert first_ours["loss"] == pytest.approx(first_theirs["loss"], rel=1e-4, abs=1e-7)
    assert first_ours["grad_norm"] == pytest.approx(first_theirs["grad_norm"], rel=1e-4)
    assert first_theirs.keys() <= first_ours.keys()


def test_success_reward_func_decides_success(tiny_model_path, cpu_config):
    def bonus(completions, **kwargs):  # a format-like bonus that must not count as success
        return [0.5] * len(completions)

    args = cpu_config(advantage_estimator="reinforce", success_reward_func="coin_reward", max_steps=1)
    trainer = AsymGRPOTrainer(
        tiny_model_path, reward_funcs=[coin_reward, bonus], args=args, train_dataset=toy_sum_dataset(32)
    )
    trainer.train()
    coin = torch.tensor(list(trainer._logs["rewards"]["coin_reward"]))
    assert torch.equal(torch.tensor(list(trainer._logs["advantages"])), coin * 2 - 1)

    with pytest.raises(ValueError, match="success_reward_func='accuracy' is not a reward function"):
        AsymGRPOTrainer(
            tiny_model_path,
            reward_funcs=coin_reward,
            args=cpu_config(success_reward_func="accuracy"),
            train_dataset=toy_sum_dataset(8),
        )


def test_several_reward_functions_need_an_explicit_success_rule(tiny_model_path, cpu_config):
    def bonus(completions, **kwargs):
        return [0.5] * len(completions)

    with pytest.raises(ValueError, match="2 reward functions: set success_reward_func"):  # before any training
        AsymGRPOTrainer(tiny_model_path, [coin_reward, bonus], cpu_config(), train_dataset=toy_sum_dataset(8))
    # 'weighted_sum' opts in to TRL's weighted sum: coin + 0.5 >= 0.5 for every rollout, so all succeed
    args = cpu_config(advantage_estimator="reinforce", success_reward_func="weighted_sum", success_threshold=0.5)
    trainer = AsymGRPOTrainer(tiny_model_path, [coin_reward, bonus], args, train_dataset=toy_sum_dataset(32))
    trainer.train()
    assert set(trainer._logs["advantages"]) == {1.0}


def test_a_single_reward_function_decides_success_unweighted(tiny_model_path, cpu_config):
    args = cpu_config(advantage_estimator="reinforce", reward_weights=[0.5], max_steps=1)
    trainer = AsymGRPOTrainer(tiny_model_path, coin_reward, args, train_dataset=toy_sum_dataset(32))
    trainer.train()
    coin = torch.tensor(list(trainer._logs["rewards"]["coin_reward"]))
    assert 0 < coin.sum() < len(coin)
    assert torch.equal(torch.tensor(list(trainer._logs["advantages"])), coin * 2 - 1)  # 0.5 x coin never reaches 1


def test_a_trl_grpo_config_is_promoted_with_the_papers_defaults(tiny_model_path, tmp_path):
    """A TRL user changes one line (the trainer's class): their GRPOConfig keeps every value, the method's fields
    take the paper's defaults, one warning line says so, and it trains."""
    args = GRPOConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", learning_rate=1e-3, max_steps=2,
        per_device_train_batch_size=8, num_generations=4, max_completion_length=8, epsilon_high=0.28,
    )  # fmt: skip
    with pytest.warns(UserWarning, match=r"promoted to AsymGRPOConfig .*'asym', beta_pos=0.9, beta_neg=0.4"):
        trainer = AsymGRPOTrainer(
            tiny_model_path, reward_funcs=coin_reward, args=args, train_dataset=toy_sum_dataset(8)
        )
    promoted = trainer.args
    assert isinstance(promoted, AsymGRPOConfig) and promoted is not args and type(args) is GRPOConfig
    assert (promoted.learning_rate, promoted.epsilon_high, promoted.output_dir) == (1e-3, 0.28, str(tmp_path))
    assert promoted.estimator_params["beta_pos"] == 0.9 and promoted.log_diagnostics
    trainer.train()
    assert trainer.state.global_step == 2
    with pytest.raises(TypeError, match="needs a GRPOConfig, got dict"):
        AsymGRPOTrainer(tiny_model_path, reward_funcs=coin_reward, args={}, train_dataset=toy_sum_dataset(8))


# ----------------------------------------------------------------- the loss terms, on one generated batch
def one_batch(trainer, n_prompts=2):
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    rows = [row for row in toy_sum_dataset(n_prompts) for _ in range(trainer.num_generations)]
    torch.manual_seed(0)
    return trainer._generate_and_score_completions(rows)


def token_entropies(trainer, batch):
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    with torch.no_grad():
        _, ent, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, attn, batch["completion_ids"].size(1), compute_entropy=True
        )
    return ent


def make_trainer(tiny_model_path, cpu_config, **kw):
    args = cpu_config(num_generations=8, per_device_train_batch_size=16, **{"advantage_estimator": "grpo", **kw})
    return AsymGRPOTrainer(tiny_model_path, reward_funcs=coin_reward, args=args, train_dataset=toy_sum_dataset(8))


def test_entropy_advantage_shapes_the_loss_per_token(tiny_model_path, cpu_config):
    plain = make_trainer(tiny_model_path, cpu_config, advantage_estimator="asym")  # not centred: the loss is not ~0
    shaped = make_trainer(
        tiny_model_path, cpu_config, advantage_estimator="asym", entropy_adv_alpha=0.4, entropy_adv_kappa=2.0
    )
    batch = one_batch(plain)
    assert batch["advantages"].abs().sum() > 0
    mask = batch["completion_mask"].float()
    ent = token_entropies(plain, batch)
    loss_plain = plain._compute_loss(plain.model, batch)
    loss_shaped = shaped._compute_loss(shaped.model, batch)
    # at ratio 1 the dapo loss is -sum(A_t * mask) / normaliser, with the same normaliser for both
    a = batch["advantages"].unsqueeze(1)
    bonus = torch.minimum(0.4 * ent, a.abs() / 2.0)
    expected_ratio = ((a + bonus) * mask).sum() / (a * mask).sum()
    assert (loss_shaped / loss_plain).item() == pytest.approx(expected_ratio.item(), rel=1e-4)
    assert batch["advantages"].dim() == 1  # the buffered batch is left untouched


@pytest.mark.parametrize("scope", ["positive", "negative"])
def test_scoped_entropy_bonus(scope, tiny_model_path, cpu_config):
    coef = 0.5
    plain = make_trainer(tiny_model_path, cpu_config)
    every = make_trainer(tiny_model_path, cpu_config, entropy_coef=coef)  # TRL's own bonus
    scoped = make_trainer(tiny_model_path, cpu_config, entropy_coef=coef, entropy_scope=scope)
    batch = one_batch(plain)
    success = batch["success"]
    assert success.any() and (~success).sum() > 1
    batch["scorable"][(~success).nonzero()[0]] = False  # an unscorable rollout is neither correct nor incorrect
    mask = batch["completion_mask"].float()
    ent = token_entropies(plain, batch)
    in_scope = (success if scope == "positive" else batch["scorable"] & ~success).float().unsqueeze(1)

    base = plain._compute_loss(plain.model, batch)
    all_bonus = base - every._compute_loss(every.model, batch)
    scoped_bonus = base - scoped._compute_loss(scoped.model, batch)
    assert all_bonus.item() == pytest.approx((coef * (ent * mask).sum() / mask.sum()).item(), rel=1e-4)
    assert scoped_bonus.item() == pytest.approx((coef * (ent * mask * in_scope).sum() / mask.sum()).item(), rel=1e-4)
    assert 0 < scoped_bonus < all_bonus


def test_scoped_entropy_bonus_pushes_entropy_only_where_it_should(tiny_model_path, cpu_config):
    """Gradient of the positive-scoped bonus is zero w.r.t. tokens of incorrect rollouts."""
    trainer = make_trainer(tiny_model_path, cpu_config, entropy_coef=1.0, entropy_scope="positive")
    batch = one_batch(trainer)
    batch = {**batch, "advantages": torch.zeros_like(batch["advantages"])}  # isolate the bonus
    loss = trainer._compute_loss(trainer.model, batch)
    loss.backward()
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert sum(g.abs().sum() for g in grads) > 0
    for p in trainer.model.parameters():
        p.grad = None
    batch["success"] = torch.zeros_like(batch["success"])  # no correct rollout -> no bonus at all
    loss = trainer._compute_loss(trainer.model, batch)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


def verl_dual_clip_loss(ratio, advantages, eps_low, eps_high, clip_c=3.0):
    """verl's compute_policy_loss (dual-clip PPO, Ye et al. 2020): max(-A r, -A clip(r)) for A >= 0; for A < 0
    that loss capped at -c A."""
    clipped = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - eps_low, 1 + eps_high))
    return torch.where(advantages < 0, torch.minimum(clipped, -advantages * clip_c), clipped)


def test_delta_3_is_verls_dual_clip(tiny_model_path, cpu_config):
    """The recipes' `delta: 3.0` (TRL's two-sided clip) gives verl's dual-clip loss per token, and its gradient."""
    trainer = make_trainer(tiny_model_path, cpu_config, delta=3.0, epsilon_high=0.28)
    batch = one_batch(trainer)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    T = batch["completion_ids"].size(1)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attn, T)
    # ratios from 0.37 to 7.4 on every rollout: inside, below and above the clip range, and above c = 3
    log_ratio = torch.linspace(-1.0, 2.0, T).expand_as(logps)
    batch["old_per_token_logps"] = logps - log_ratio
    a = batch["advantages"].unsqueeze(1)
    mask = batch["completion_mask"].float()
    assert ((log_ratio.exp() > 3) & (a < 0) & (mask > 0)).any() and ((a > 0) & (mask > 0)).any()

    trl_loss = trainer._compute_loss(trainer.model, batch)
    trl_loss.backward()
    trl_grads = [p.grad.clone() for p in trainer.model.parameters()]
    trainer.model.zero_grad()

    new_logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attn, T)
    ratio = torch.exp(new_logps - batch["old_per_token_logps"])
    per_token = verl_dual_clip_loss(ratio, a, 0.2, 0.28)
    # TRL's dapo normaliser: the generation batch's completion tokens, one accumulation window of it
    normaliser = (
        batch["num_items_in_batch"] * trainer.current_gradient_accumulation_steps / trainer.args.steps_per_generation
    )
    verl_loss = (per_token * mask).sum() / normaliser
    verl_loss.backward()
    assert trl_loss.item() == pytest.approx(verl_loss.item(), rel=1e-5)
    for ours, theirs in zip(trl_grads, (p.grad for p in trainer.model.parameters()), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-7)
