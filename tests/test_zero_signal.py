"""The zero-signal skip leaves the update unchanged (one and two processes), logs what it skipped and under which
names its metrics are, and switches itself off when zero-advantage rollouts count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asym_trl import AsymGRPOTrainer
from asym_trl.apps.tiny import toy_sum_dataset
from asym_trl.diagnostics import rollouts_of_step
from asym_trl.trl_compat import metrics
from asym_trl.zero_signal import SKIPPED_FRAC, informative_rows, select_rows

G = 4
TOL = dict(rtol=1e-5, atol=1e-7)  # gradients: float summation order only
# Weights after AdamW steps (lr 1e-3): Adam's normalisation lifts summation-order noise in tiny gradients to ~3e-7.
WEIGHT_TOL = dict(rtol=1e-4, atol=1e-6)


def group_reward(completions, **kwargs):
    """Group j of the batch: all-solved (j % 3 == 0), none-solved (1) or half solved (2), so ~2/3 of the rollouts
    have advantage 0 under AsymGRPO."""
    kinds = [(i // G) % 3 for i in range(len(completions))]
    return [float(k == 0 or (k == 2 and i % G < G // 2)) for i, k in enumerate(kinds)]


def make(tiny_model_path, cpu_config, reward=group_reward, **kw):
    args = cpu_config(num_generations=G, per_device_train_batch_size=12, log_diagnostics=False, **kw)
    return AsymGRPOTrainer(tiny_model_path, reward_funcs=reward, args=args, train_dataset=toy_sum_dataset(24))


def batch_of(trainer, n_prompts=3):
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    return trainer._generate_and_score_completions([row for row in toy_sum_dataset(n_prompts) for _ in range(G)])


def grads(trainer, batch, skip: bool):
    trainer.model.zero_grad()
    trainer.zero_signal.enabled = skip
    loss = trainer._compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo", "dr_grpo"])
def test_one_micro_batch_same_loss_and_gradients(loss_type, tiny_model_path, cpu_config):
    trainer = make(tiny_model_path, cpu_config, loss_type=loss_type, skip_zero_signal=True)
    batch = batch_of(trainer)
    # completions of different lengths (as if they stopped early), so that the four normalisers differ
    lengths = 1 + torch.arange(len(batch["advantages"])) * 3 % batch["completion_mask"].size(1)
    batch["completion_mask"] = batch["completion_mask"] * (
        torch.arange(batch["completion_mask"].size(1)) < lengths[:, None]
    )
    batch["num_items_in_batch"] = batch["completion_mask"].sum()
    keep = informative_rows(batch["advantages"])
    assert 0 < keep.sum() < len(keep)  # some rows really are skipped
    mask = batch["completion_mask"]
    assert mask[keep].sum() / mask.sum() != keep.float().mean()  # a token or a row normaliser: not the same here
    loss_full, full = grads(trainer, batch, skip=False)
    loss_skip, skip = grads(trainer, batch, skip=True)
    assert torch.allclose(loss_skip, loss_full, **TOL)
    assert full.keys() == skip.keys()
    for name in full:
        torch.testing.assert_close(skip[name], full[name], **TOL)
    logged = metrics(trainer, "train")
    assert logged[SKIPPED_FRAC][-1] == pytest.approx(1 - keep.float().mean().item())
    assert "entropy/informative" in logged and "clip_ratio/region_mean/informative" in logged
    assert len(logged["entropy"]) == 1  # the no-skip call only: under the skip TRL's name is not used


def test_a_micro_batch_without_signal_still_runs_and_gives_zero(tiny_model_path, cpu_config):
    trainer = make(tiny_model_path, cpu_config, reward=lambda completions, **kw: [1.0] * len(completions))
    trainer.zero_signal.enabled = True
    batch = batch_of(trainer)
    assert not informative_rows(batch["advantages"]).any()
    loss, skip = grads(trainer, batch, skip=True)
    assert loss.item() == 0.0 and skip and all(g.abs().max() == 0 for g in skip.values())
    logged = metrics(trainer, "train")
    assert logged[SKIPPED_FRAC] == [pytest.approx(1 - 1 / len(batch["advantages"]))]  # one masked-out row runs
    assert "entropy" not in logged and "entropy/informative" not in logged  # no token to average over


def test_select_rows_indexes_rows_only():
    inputs = {"advantages": torch.tensor([0.0, 1.0, 0.0]), "ids": torch.arange(6).view(3, 2), "n": torch.tensor(7)}
    out = select_rows(inputs | {"texts": ["a", "b", "c"]}, torch.tensor([1]))
    assert out["ids"].tolist() == [[2, 3]] and out["texts"] == ["b"] and out["n"].item() == 7


def params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def train_both(tiny_model_path, cpu_config, **kw):
    runs = []
    for skip in (False, True):
        trainer = make(tiny_model_path, cpu_config, skip_zero_signal=skip, **kw)
        trainer.train()
        runs.append((params(trainer), trainer.state.log_history))
    return runs


def test_training_with_accumulation_and_iterations_gives_the_same_weights(tiny_model_path, cpu_config):
    # one generation batch (24 rollouts) feeds 2 optimizer steps of 2 micro-batches, each seen twice
    kw = dict(gradient_accumulation_steps=2, steps_per_generation=2, num_iterations=2, max_steps=2)
    (full, full_logs), (skip, skip_logs) = train_both(tiny_model_path, cpu_config, **kw)
    for name in full:
        torch.testing.assert_close(skip[name], full[name], **WEIGHT_TOL)
    steps = [h for h in skip_logs if "loss" in h]
    assert all(h[SKIPPED_FRAC] == pytest.approx(2 / 3) for h in steps)
    assert all("entropy/informative" in h and "entropy" not in h for h in steps)
    assert all("entropy" in h and SKIPPED_FRAC not in h for h in full_logs if "loss" in h)


def test_steps_aside_while_the_diagnostics_need_every_rollout(tiny_model_path, cpu_config):
    args = cpu_config(num_generations=G, per_device_train_batch_size=12, skip_zero_signal=True)  # Cov(p) window: 40
    trainer = AsymGRPOTrainer(tiny_model_path, reward_funcs=group_reward, args=args, train_dataset=toy_sum_dataset(24))
    trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert all(h[SKIPPED_FRAC] == 0.0 and "entropy" in h and "entropy/correct" in h for h in steps)


def test_rollouts_an_optimizer_step_reads():
    assert rollouts_of_step(0, 2, 2, 2) == [0]  # a generation batch spans 2 optimizer steps
    assert rollouts_of_step(1, 2, 2, 2) == [0]
    assert rollouts_of_step(2, 2, 2, 2) == [1]
    assert rollouts_of_step(1, 4, 2, 1) == [2, 2]  # two generations in one step, numbered as the diagnostics do


def test_steps_aside_on_rollout_displacement_steps(tiny_model_path, cpu_config):
    args = cpu_config(
        num_generations=G,
        per_device_train_batch_size=12,
        skip_zero_signal=True,
        cov_window_rollout_steps=0,
        likelihood_displacement_rollout_steps=2,
    )
    trainer = AsymGRPOTrainer(tiny_model_path, reward_funcs=group_reward, args=args, train_dataset=toy_sum_dataset(24))
    trainer.train()
    skipped = [h[SKIPPED_FRAC] for h in trainer.state.log_history if "loss" in h]
    assert skipped[0] > 0 and skipped[1] == 0.0  # rollout 1 is measured: every row runs


@pytest.mark.parametrize(
    "kw, reason",
    [
        (dict(beta=0.04), "KL"),
        (dict(entropy_coef=0.001), "entropy bonus"),
        (dict(entropy_coef=0.001, entropy_scope="positive"), "entropy bonus"),
        (dict(entropy_adv_alpha=0.4), "entropy advantage"),
        (dict(top_entropy_quantile=0.2), "top_entropy_quantile"),
    ],
)
def test_switches_itself_off_when_zero_advantage_rollouts_count(kw, reason, tiny_model_path, cpu_config):
    with pytest.warns(UserWarning, match=reason):
        trainer = make(tiny_model_path, cpu_config, skip_zero_signal=True, **kw)
    assert not trainer.zero_signal.enabled
    batch = batch_of(trainer)
    trainer._compute_loss(trainer.model, batch)
    assert SKIPPED_FRAC not in metrics(trainer, "train") and "entropy" in metrics(trainer, "train")


def test_off_by_default(tiny_model_path, cpu_config):
    assert not make(tiny_model_path, cpu_config).zero_signal.enabled


@pytest.mark.slow
def test_two_processes_same_weights_with_a_process_fully_skipped(tiny_model_path, tmp_path):
    script = Path(__file__).parent / "scripts" / "record_zero_signal.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    records = {}
    for mode in ("0", "1", "ds"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        cmd += [str(script), str(tmp_path), tiny_model_path, mode]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        records[mode] = json.loads((tmp_path / f"{mode}.json").read_text())
        assert records[mode]["world_size"] == 2
    full, skip = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    for name in full:
        torch.testing.assert_close(skip[name], full[name], **WEIGHT_TOL)
    # process 1's 8 rollouts and process 0's none-solved group have advantage 0; both forward process 0's count
    skipped = [h["zero_signal/skipped_frac"] for h in records["1"]["logs"]]
    assert skipped and all(0 < s <= 0.75 for s in skipped)
    # dynamic sampling: the same number of generations on both processes (no hang), capped; 1 of 4 groups fills
    steps = records["ds"]["logs"]
    assert steps[0]["dynamic_sampling/generations"] == 3
    assert steps[0]["dynamic_sampling/informative_groups"] == pytest.approx(0.25)
    assert steps[0]["groups/all_solved"] == pytest.approx(0.5)


# ----------------------------------------------------------------- dynamic sampling
def scripted_reward(plans):
    """Generation k (one call per generation) gives group j the kind plans[k][j]: 'all', 'none' or 'mixed'."""
    calls = []

    def reward(completions, **kwargs):
        plan = plans[min(len(calls), len(plans) - 1)]
        calls.append(1)
        kind = {"all": lambda i: 1.0, "none": lambda i: 0.0, "mixed": lambda i: float(i < G // 2)}
        return [kind[plan[i // G]](i % G) for i in range(len(completions))]

    reward.calls = calls
    return reward


@pytest.mark.parametrize("cap, generations", [(2, 2), (3, 3)])
def test_dynamic_sampling_fills_the_batch_and_keeps_the_shares(cap, generations, tiny_model_path, cpu_config):
    reward = scripted_reward([["all", "none", "mixed"], ["mixed", "all", "all"], ["all", "mixed", "none"]])
    args = cpu_config(
        num_generations=G, per_device_train_batch_size=12, dynamic_sampling=True, dynamic_sampling_max_generations=cap
    )
    trainer = AsymGRPOTrainer(tiny_model_path, reward_funcs=reward, args=args, train_dataset=toy_sum_dataset(24))
    batch = batch_of(trainer)
    assert len(reward.calls) == generations
    filled = informative_rows(batch["advantages"]).view(-1, G).all(dim=1).tolist()
    assert filled == [True, cap == 3, True]  # group 0 from generation 2, group 1 from generation 3, group 2 kept
    mask = batch["completion_mask"]
    assert batch["num_items_in_batch"].item() == mask.sum().item()
    assert mask.shape == batch["completion_ids"].shape
    logged = metrics(trainer, "train")
    assert logged["dynamic_sampling/generations"] == [float(generations)]
    assert logged["dynamic_sampling/informative_groups"] == [pytest.approx((2 + (cap == 3)) / 3)]
    # the shares count every generated group, the dropped ones included
    all_solved = [1 / 3, 2 / 3, 1 / 3][:generations]
    assert logged["groups/all_solved"] == [pytest.approx(v) for v in all_solved]
    # the diagnostics see the merged batch: its success pattern
    success = trainer.diagnostics.groups["train"]["success"].view(-1, G).sum(dim=1).tolist()
    assert success == [G // 2, G // 2 if cap == 3 else 0, G // 2]


def test_dynamic_sampling_trains(tiny_model_path, cpu_config):
    reward = scripted_reward([["all", "none", "mixed"], ["mixed", "mixed", "all"]])
    args = cpu_config(num_generations=G, per_device_train_batch_size=12, dynamic_sampling=True, skip_zero_signal=True)
    trainer = AsymGRPOTrainer(tiny_model_path, reward_funcs=reward, args=args, train_dataset=toy_sum_dataset(24))
    trainer.train()
    assert all(h["dynamic_sampling/generations"] >= 1 for h in trainer.state.log_history if "loss" in h)


def test_dynamic_sampling_needs_a_cap(cpu_config):
    with pytest.raises(ValueError, match="max_generations"):
        cpu_config(num_generations=G, dynamic_sampling=True, dynamic_sampling_max_generations=0)


def test_merge_keeps_a_per_sequence_importance_ratio_one_column():
    """TRL's sequence-level importance-sampling ratio is (B, 1): merging regenerated rows must not pad it to the
    completion width (that would apply the ratio to the first token only); a per-token ratio is padded."""
    from asym_trl.dynamic_sampling import merge_rows

    base = {
        "completion_ids": torch.ones(2, 2, dtype=torch.long),
        "importance_sampling_ratio": torch.tensor([[0.0], [0.5]]),
    }
    new = {
        "completion_ids": torch.ones(2, 4, dtype=torch.long),
        "importance_sampling_ratio": torch.tensor([[0.2], [0.7]]),
    }
    take = torch.tensor([True, False])
    merged = merge_rows(base, new, take, pad_id=0, per_token_ratio=False)
    torch.testing.assert_close(merged["importance_sampling_ratio"], torch.tensor([[0.2], [0.5]]))
    assert merged["completion_ids"].shape == (2, 4)
    per_token = {**base, "importance_sampling_ratio": torch.full((2, 2), 0.5)}
    new_per_token = {**new, "importance_sampling_ratio": torch.full((2, 4), 0.2)}
    merged = merge_rows(per_token, new_per_token, take, pad_id=0, per_token_ratio=True)
    torch.testing.assert_close(merged["importance_sampling_ratio"], torch.tensor([[0.2] * 4, [0.5, 0.5, 1.0, 1.0]]))
