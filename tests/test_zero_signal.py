"""The zero-signal skip leaves the update unchanged (one and two processes), logs what it skipped and under which
names its metrics are, and switches itself off when zero-advantage rollouts count."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scripts.record_zero_signal import GradientSum  # tests/scripts

from asym_trl import AsymGRPOTrainer
from asym_trl.apps.tiny import toy_sum_dataset
from asym_trl.diagnostics.measures import rollouts_of_step
from asym_trl.rollouts.rows import select_rows, trim_completions
from asym_trl.rollouts.zero_signal import SKIPPED_FRAC, informative_rows, regroup
from asym_trl.trl_compat import metrics

G = 4
TOL = dict(rtol=1e-5, atol=1e-7)  # gradients: float summation order only


def assert_same_update(skip: dict, full: dict) -> None:
    """The gradients the optimizer stepped on (summed over steps) are equal up to float summation order; a rollout
    dropped or counted twice changes them by far more."""
    assert full.keys() == skip.keys() and max(g.abs().max().item() for g in full.values()) > 0
    for name, grad in full.items():
        torch.testing.assert_close(skip[name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item())


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


def rows_of(advantages, start=0):
    n = len(advantages)
    return {
        "advantages": torch.tensor(advantages),
        "ids": torch.arange(start, start + n),
        "texts": [f"r{i}" for i in range(start, start + n)],
        "num_items_in_batch": torch.tensor(99),
    }


def test_regroup_moves_informative_rows_last_and_keeps_each_row_whole():
    out = regroup([rows_of([0.0, 1.0, 0.0, 0.0]), rows_of([-1.0, 0.0, 0.5, 0.0], start=4)])
    assert [b["ids"].tolist() for b in out] == [[0, 2, 3, 5], [7, 1, 4, 6]]  # zero-signal rows, then informative
    assert [b["advantages"].tolist() for b in out] == [[0.0] * 4, [0.0, 1.0, -1.0, 0.5]]
    assert out[1]["texts"] == ["r7", "r1", "r4", "r6"] and all(b["num_items_in_batch"].item() == 99 for b in out)


@pytest.mark.parametrize("spg, accum, block", [(4, 2, 2), (2, 4, 2), (4, 4, 4), (3, 2, 1), (2, 2, 2)])
def test_rows_move_only_between_micro_batches_of_one_optimizer_step(spg, accum, block, tiny_model_path, cpu_config):
    trainer = make(
        tiny_model_path, cpu_config, skip_zero_signal=True, steps_per_generation=spg, gradient_accumulation_steps=accum
    )
    assert trainer.zero_signal.block == block
    micro = [rows_of([float(i % 2), 0.0, 1.0, 0.0], start=4 * i) for i in range(spg)]
    out = trainer.arrange_micro_batches(micro)

    def ids(batches, start):
        return sorted(i for batch in batches[start : start + block] for i in batch["ids"].tolist())

    for start in range(0, spg, block):  # each block keeps its own rows, informative ones last
        assert ids(out, start) == ids(micro, start)
        if block > 1:
            assert out[start]["advantages"].eq(0).all()
    if block == 1:
        assert out is micro


def test_no_regrouping_under_a_per_micro_batch_token_normaliser(tiny_model_path, cpu_config):
    trainer = make(tiny_model_path, cpu_config, skip_zero_signal=True, loss_type="bnpo", gradient_accumulation_steps=2)
    micro = [rows_of([1.0, 0.0]), rows_of([0.0, 0.0], start=2)]
    assert trainer.arrange_micro_batches(micro) is micro


def test_trim_completions_drops_only_columns_no_row_uses():
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    batch = {
        "advantages": torch.tensor([1.0, -1.0]),
        "completion_ids": torch.arange(8).view(2, 4),
        "completion_mask": mask,
        "old_per_token_logps": torch.zeros(2, 4),
        "importance_sampling_ratio": torch.ones(2, 1),  # per sequence: one column stays
        "prompt_ids": torch.ones(2, 4, dtype=torch.long),  # not completion-aligned, same width
    }
    out = trim_completions(batch)
    assert out["completion_ids"].tolist() == [[0, 1], [4, 5]] and out["completion_mask"].tolist() == [[1, 1], [1, 0]]
    assert out["old_per_token_logps"].shape == (2, 2) and out["importance_sampling_ratio"].shape == (2, 1)
    assert out["prompt_ids"].shape == (2, 4)
    assert trim_completions(out) is out
    assert trim_completions(batch, multiple=3)["completion_ids"].shape == (2, 3)  # TRL's pad_to_multiple_of
    assert trim_completions(batch, multiple=8) is batch  # never wider than it was


def count_loss_calls(trainer) -> list:
    calls = []
    trl_loss = trainer.trl_loss
    trainer.trl_loss = lambda model, batch: calls.append(len(batch["advantages"])) or trl_loss(model, batch)
    return calls


def train_both(tiny_model_path, cpu_config, reward=group_reward, **kw):
    """(summed gradients, log history, rows of each TRL loss call) of a plain-SGD run (step 2's gradients at weights
    that differ by float noise x lr only) without, then with the skip."""
    runs = []
    for skip in (False, True):
        trainer = make(tiny_model_path, cpu_config, reward=reward, skip_zero_signal=skip, optim="sgd", **kw)
        calls = count_loss_calls(trainer)
        gradients = GradientSum()
        trainer.add_callback(gradients)
        trainer.train()
        runs.append((gradients.sums, trainer.state.log_history, calls))
    return runs


def test_training_with_accumulation_and_iterations_gives_the_same_gradients(tiny_model_path, cpu_config):
    # one generation batch (24 rollouts: 2 of 6 groups informative) feeds an optimizer step of 2 micro-batches,
    # twice (num_iterations): the first micro-batch holds 12 zero-signal rows and skips TRL's loss, the second
    # forwards the 8 informative rows
    kw = dict(gradient_accumulation_steps=2, steps_per_generation=2, num_iterations=2, max_steps=2)
    (full, full_logs, full_calls), (skip, skip_logs, skip_calls) = train_both(tiny_model_path, cpu_config, **kw)
    assert_same_update(skip, full)
    assert full_calls == [12] * 4 and skip_calls == [8, 8]
    steps = [h for h in skip_logs if "loss" in h]
    assert all(h[SKIPPED_FRAC] == pytest.approx((1 + 4 / 12) / 2) for h in steps)
    assert all("entropy/informative" in h and "entropy" not in h for h in steps)
    assert all("entropy" in h and SKIPPED_FRAC not in h for h in full_logs if "loss" in h)
    assert [h["loss"] for h in steps] == pytest.approx([h["loss"] for h in full_logs if "loss" in h], abs=1e-6)


def test_a_generation_batch_over_two_optimizer_steps_keeps_each_steps_rows(tiny_model_path, cpu_config):
    # 48 rollouts (4 of 12 groups informative) feed 2 optimizer steps of 2 micro-batches each: rows move only
    # within a step, so each step's update is the one without the skip
    kw = dict(gradient_accumulation_steps=2, steps_per_generation=4, max_steps=2)
    (full, _, full_calls), (skip, skip_logs, skip_calls) = train_both(tiny_model_path, cpu_config, **kw)
    assert_same_update(skip, full)
    assert len(full_calls) == 4 and len(skip_calls) < 4 and sum(skip_calls) == 16


def test_a_window_without_signal_runs_only_its_last_micro_step(tiny_model_path, cpu_config):
    solved = lambda completions, **kw: [1.0] * len(completions)  # noqa: E731
    kw = dict(gradient_accumulation_steps=2, steps_per_generation=2, max_steps=2)
    (full, _, full_calls), (skip, skip_logs, skip_calls) = train_both(tiny_model_path, cpu_config, solved, **kw)
    assert full.keys() == skip.keys() and all(g.abs().max() == 0 for g in (*full.values(), *skip.values()))
    assert full_calls == [12] * 4 and skip_calls == [1, 1]  # one masked row ends each window
    assert [h[SKIPPED_FRAC] for h in skip_logs if "loss" in h] == pytest.approx([(1 + 11 / 12) / 2] * 2)


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
def test_switches_itself_off_when_zero_advantage_rollouts_count(kw, reason, tiny_model_path, cpu_config, caplog):
    with caplog.at_level(logging.INFO, logger="asym_trl.rollouts.zero_signal"):
        trainer = make(tiny_model_path, cpu_config, **kw)  # on by default
    assert not trainer.zero_signal.enabled
    assert any(reason in blocker for blocker in trainer.zero_signal.blockers)
    assert "skip_zero_signal is off" in caplog.text and reason in caplog.text
    batch = batch_of(trainer)
    trainer._compute_loss(trainer.model, batch)
    assert SKIPPED_FRAC not in metrics(trainer, "train") and "entropy" in metrics(trainer, "train")


def test_on_by_default_and_a_key_turns_it_off(tiny_model_path, cpu_config):
    assert make(tiny_model_path, cpu_config).zero_signal.enabled
    trainer = make(tiny_model_path, cpu_config, skip_zero_signal=False)
    assert not trainer.zero_signal.enabled and trainer.zero_signal.blockers == ["skip_zero_signal=False"]
    micro = [rows_of([0.0, 1.0]), rows_of([0.0, 0.0], start=2)]
    assert trainer.arrange_micro_batches(micro) is micro  # TRL's micro-batches, untouched


@pytest.mark.slow
def test_two_processes_same_gradients_with_a_process_fully_skipped(tiny_model_path, tmp_path):
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
    assert_same_update(torch.load(tmp_path / "1.pt"), torch.load(tmp_path / "0.pt"))
    # process 1's 8 rollouts and process 0's none-solved group have advantage 0; both forward process 0's count
    # regrouped: each window's first micro-step has no informative row on either process and skips the model; the
    # second forwards process 0's 4 informative rows on both processes
    skipped = [h["zero_signal/skipped_frac"] for h in records["1"]["logs"]]
    assert skipped == pytest.approx([0.5, 0.5])
    # dynamic sampling from new prompts: the same number of generations on both processes (no hang), capped at 3
    # as process 1's groups never fill; process 0's none-solved slot takes a new prompt's mixed group: 2 of 4 groups
    steps = records["ds"]["logs"]
    assert steps[0]["dynamic_sampling/generations"] == 3
    assert steps[0]["dynamic_sampling/informative_groups"] == pytest.approx(0.5)
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
    trainer.diagnostics.deferred.flush()  # the diagnostics' values join TRL's buffer at the step that logs them
    logged = metrics(trainer, "train")
    assert logged["dynamic_sampling/generations"] == [float(generations)]
    assert logged["dynamic_sampling/informative_groups"] == [pytest.approx((2 + (cap == 3)) / 3)]
    # the shares count every generated group, the dropped ones included
    all_solved = [1 / 3, 2 / 3, 1 / 3][:generations]
    assert logged["groups/all_solved"] == [pytest.approx(v) for v in all_solved]
    # the diagnostics see the merged batch: its success pattern
    success = trainer.diagnostics.groups["train"]["success"].view(-1, G).sum(dim=1).tolist()
    assert success == [G // 2, G // 2 if cap == 3 else 0, G // 2]


def record_generations(trainer) -> list:
    """(inputs, scored batch) of every generation the trainer runs."""
    generations = []
    trl_generate = trainer.trl_generate

    def generate(inputs):
        generations.append((inputs, trl_generate(inputs)))
        return generations[-1][1]

    trainer.trl_generate = generate
    return generations


def tokens(batch, rows, ids="prompt_ids", mask="prompt_mask"):
    return [batch[ids][r][batch[mask][r].bool()].tolist() for r in rows]


@pytest.mark.parametrize("prompts", ["new", "same"])
def test_dynamic_sampling_from_new_or_the_same_prompts(prompts, tiny_model_path, cpu_config):
    # generation 2's only informative group is its third: new prompts put it in the first open slot (group 0); the
    # same prompts can only refill a group from its own prompt, and groups 0 and 1 of generation 2 carry no signal
    reward = scripted_reward([["all", "none", "mixed"], ["none", "none", "mixed"]])
    args = cpu_config(
        num_generations=G,
        per_device_train_batch_size=12,
        dynamic_sampling=True,
        dynamic_sampling_max_generations=2,
        dynamic_sampling_prompts=prompts,
    )
    trainer = AsymGRPOTrainer(tiny_model_path, reward_funcs=reward, args=args, train_dataset=toy_sum_dataset(24))
    generations = record_generations(trainer)
    batch = batch_of(trainer)
    (first_inputs, first), (second_inputs, second) = generations
    assert (second_inputs == first_inputs) == (prompts == "same")
    filled = informative_rows(batch["advantages"]).view(-1, G).all(dim=1).tolist()
    if prompts == "same":
        assert filled == [False, False, True]
        assert tokens(batch, range(12)) == tokens(first, range(12))
        return
    assert filled == [True, False, True]
    assert len({str(row["prompt"]) for row in second_inputs[::G]}) == 3  # three prompts, without replacement
    assert second_inputs[8]["prompt"] != first_inputs[0]["prompt"]
    slot, kept = range(0, G), range(G, 3 * G)  # group 0 now holds generation 2's group 2, prompt and completions
    assert tokens(batch, slot) == tokens(second, range(2 * G, 3 * G))
    completion = dict(ids="completion_ids", mask="completion_mask")
    assert tokens(batch, slot, **completion) == tokens(second, range(2 * G, 3 * G), **completion)
    assert tokens(batch, kept) == tokens(first, kept) and tokens(batch, kept, **completion) == tokens(
        first, kept, **completion
    )
    torch.testing.assert_close(batch["advantages"][slot], second["advantages"][2 * G : 3 * G])
    assert batch["rollout_index"].tolist() == first["rollout_index"].tolist()  # the diagnostics index slots
    success = trainer.diagnostics.groups["train"]["success"].view(-1, G).sum(dim=1).tolist()
    assert success == [G // 2, 0, G // 2]


def test_dynamic_sampling_new_prompts_need_a_map_style_dataset(tiny_model_path, cpu_config):
    args = cpu_config(num_generations=G, per_device_train_batch_size=12, dynamic_sampling=True)
    stream = toy_sum_dataset(24).to_iterable_dataset()
    with pytest.raises(ValueError, match="map-style dataset.*dynamic_sampling_prompts='same'"):
        AsymGRPOTrainer(tiny_model_path, reward_funcs=group_reward, args=args, train_dataset=stream)
    trainer = AsymGRPOTrainer(tiny_model_path, reward_funcs=group_reward, args=args, train_dataset=toy_sum_dataset(2))
    assert len(trainer.dynamic_sampling.new_prompts(4 * G)) == 4 * G  # more than the set holds: it is repeated
    trainer.train_dataset = None  # set after construction, as the Trainer allows
    with pytest.raises(ValueError, match="non-empty map-style dataset"):
        trainer.dynamic_sampling.new_prompts(G)


def test_dynamic_sampling_refuses_multimodal_batches():
    from asym_trl.rollouts.dynamic_sampling import check_text_only

    check_text_only({"prompt_ids": torch.ones(2, 3), "pixel_values": None})
    with pytest.raises(ValueError, match=r"multimodal.*pixel_values.*dynamic_sampling=False"):
        check_text_only({"prompt_ids": torch.ones(2, 3), "pixel_values": torch.ones(4, 8)})


def test_fill_slots_keeps_groups_on_their_process():
    from asym_trl.rollouts.dynamic_sampling import fill_slots

    open_slots = torch.tensor([True, False, True, True, True, False])
    available = torch.tensor([False, True, True, False, False, True])
    assert fill_slots(open_slots, available, 2, same_prompt=True).tolist() == [-1, -1, 2, -1, -1, -1]
    # process 0 (groups 0-2): slots 0, 2 take new groups 1, 2; process 1 (groups 3-5): slot 3 takes group 5
    assert fill_slots(open_slots, available, 2, same_prompt=False).tolist() == [1, -1, 2, 5, -1, -1]


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
    from asym_trl.rollouts.dynamic_sampling import merge_rows

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
