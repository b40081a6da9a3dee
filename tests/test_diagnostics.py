"""Diagnostics (asym_trl/diagnostics/measures.py and the trainer's logging) against values computed by hand.

Unit tests feed small crafted tensors.  Trainer tests replace generation by a scripted ``rollout_func`` so the
rewards of every group are known, recompute log-probs and entropies with an independent forward pass of the
model, and check that the logged metrics do not depend on how the batch is split (micro-batches, gradient
accumulation, processes).  Run as a script (``torchrun ... tests/test_diagnostics.py OUT.json``) it is the
per-process entry point of the 2-process test.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asym_trl import AsymGRPOConfig, AsymGRPOTrainer
from asym_trl.apps.tiny import cpu_run_kwargs
from asym_trl.diagnostics import measures as diag

REPO = Path(__file__).resolve().parents[1]
G = 4


# ----------------------------------------------------------------------------- pure functions
def test_group_counts_levels_and_shares():
    success = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    valid = torch.ones_like(success)
    valid[3, 3] = False  # one unscorable rollout: p = 2/3 -> level round(4 * 2/3) = 3
    valid[4] = False  # nothing scorable: left out
    k, n = diag.group_counts(success, valid)
    assert k.tolist() == [1, 4, 0, 2, 0] and n.tolist() == [4, 4, 4, 3, 0]
    levels = diag.accuracy_levels(k, n, G)
    assert levels.tolist() == [1, 4, 0, 3, -1]
    assert diag.solve_counts(k, n).tolist() == [1, 1, 4]  # all-solved, none-solved, scorable groups
    hist = diag.accuracy_histogram(levels, G)
    assert hist.tolist() == [0.25, 0.25, 0.0, 0.25, 0.25]
    assert torch.isnan(diag.accuracy_histogram(torch.tensor([-1, -1]), G)).all()


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="num_groups, G"):
        diag.group_counts(torch.ones(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="k <= n"):
        diag.accuracy_levels(torch.tensor([3]), torch.tensor([2]), 4)
    with pytest.raises(ValueError, match="same shape"):
        diag.advantage_stats(torch.zeros(3), torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="levels must lie"):
        diag.covariance_level_sums(torch.zeros(2), torch.tensor([0, 5]), 4)


def test_advantage_stats_by_correctness():
    adv = torch.tensor([3.0, -1.0, -0.5, 0.0, 2.0])
    success = torch.tensor([True, False, False, False, True])
    valid = torch.tensor([True, True, True, False, True])  # the unscorable rollout (adv 0) counts nowhere
    stats = diag.advantage_stats(adv, success, valid)
    assert stats == pytest.approx(
        {"correct_mean": 2.5, "correct_abs_mean": 2.5, "incorrect_mean": -0.75, "incorrect_abs_mean": 0.75}
    )
    none = diag.advantage_stats(adv, torch.zeros(5, dtype=torch.bool), valid)
    assert math.isnan(none["correct_mean"]) and none["incorrect_mean"] == pytest.approx((3 - 1 - 0.5 + 2) / 4)


def test_split_token_sums_and_ratio():
    values = torch.tensor([[1.0, 2.0, 9.0], [4.0, 9.0, 9.0], [5.0, 6.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    correct = torch.tensor([True, False, False])
    incorrect = torch.tensor([False, True, True])
    sums = diag.split_token_sums(values, mask, correct, incorrect)
    assert sums.tolist() == [3.0, 2.0, 22.0, 4.0]
    means = diag.ratio(sums[[0, 2]], sums[[1, 3]])
    assert means.tolist() == [1.5, 5.5]
    assert torch.isnan(diag.ratio(torch.tensor([1.0]), torch.tensor([0.0]))).all()


def test_length_normalized_logps_eq12():
    logps = torch.tensor([[-1.0, -3.0, -100.0], [-0.5, -100.0, -100.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    out = diag.length_normalized_logps(logps, mask)
    assert out[:2].tolist() == [-2.0, -0.5] and math.isnan(out[2])


def test_group_covariance_eq13_and_cov_p_eq14():
    # group 0: x = (-1, -2, -3, -4), A = (3, -1, -1, -1): mu_x = -2.5, mu_A = 0
    #   cov = (1.5*3 + 0.5*-1 + -0.5*-1 + -1.5*-1) / 4 = 6 / 4 = 1.5
    # group 1: x = (-1, -1, -2, -2), A = (1, 1, -1, -1): mu_x = -1.5, mu_A = 0 -> cov = 4 * 0.5 / 4 = 0.5
    # group 2: as group 0 but rollout 3 unscorable: x = (-1, -2, -3), A = (3, -1, -1): mu_x = -2, mu_A = 1/3
    #   cov = (1*(8/3) + 0*(-4/3) + -1*(-4/3)) / 3 = 4/3
    x = torch.tensor([[-1.0, -2, -3, -4], [-1, -1, -2, -2], [-1, -2, -3, -4]])
    adv = torch.tensor([[3.0, -1, -1, -1], [1, 1, -1, -1], [3, -1, -1, 0]])
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[2, 3] = False
    cov = diag.group_covariance(x, adv, valid)
    assert cov.tolist() == pytest.approx([1.5, 0.5, 4 / 3])
    # Eq. 14: groups 0 and 2 at level 1, group 1 at level 2; a NaN covariance and level -1 are dropped.
    cov_all = torch.cat([cov, torch.tensor([float("nan"), 7.0])])
    sums, counts = diag.covariance_level_sums(cov_all, torch.tensor([1, 2, 1, 3, -1]), G)
    assert counts.tolist() == [0, 2, 1, 0, 0]
    cov_p = diag.ratio(sums, counts)
    assert cov_p[1].item() == pytest.approx((1.5 + 4 / 3) / 2) and cov_p[2].item() == pytest.approx(0.5)
    assert torch.isnan(cov_p[[0, 3, 4]]).all()


def test_cov_with_rewards_is_estimator_independent():
    # group 0 above with r = (1, 0, 0, 0): mu_x = -2.5, mu_r = 1/4
    #   Cov(x, r) = (1.5 * 3/4 + 0.5 * -1/4 + -0.5 * -1/4 + -1.5 * -1/4) / 4 = 1.5 / 4 = 0.375
    # and Cov(x, A) = (A_pos - A_neg) Cov(x, r): 4 x 0.375 = 1.5 for A = (3, -1, -1, -1) as above
    x = torch.tensor([[-1.0, -2, -3, -4]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    r = torch.tensor([[1.0, 0, 0, 0]])
    assert diag.group_covariance(x, r, valid).item() == pytest.approx(0.375)
    for a_pos, a_neg in ((3.0, -1.0), (7**0.9, -((1 / 7) ** 0.4))):
        adv = torch.where(r.bool(), a_pos, a_neg)
        assert diag.group_covariance(x, adv, valid).item() == pytest.approx((a_pos - a_neg) * 0.375)


def test_likelihood_displacement_sums():
    old = torch.tensor([[-1.0, -2.0, -5.0], [-1.0, -1.0, -1.0], [-3.0, -3.0, -3.0]])
    new = torch.tensor([[-0.5, -1.0, 0.0], [-2.0, -2.0, -2.0], [-2.0, -2.0, -2.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    correct = torch.tensor([True, False, True])
    totals = diag.likelihood_displacement_sums(new, old, mask, correct)
    # rollout 0: 0.5 + 1.0 = 1.5 over 2 tokens; rollout 2: 1.0 over 1 token; rollout 1 is incorrect.
    assert totals.tolist() == [2.5, 2.0, 3.0]


# ----------------------------------------------------------------------------- trainer
@pytest.fixture(scope="module")
def model_path(tiny_model_path, tmp_path_factory):
    """The tiny model with scaled-up weights: at random init its token entropies are all ~log(vocab), which
    would let a wrong token selection pass; these vary (about 3 to 5 nats) from token to token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("sharp-model")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.mul_(8.0 if "embed" in name else 8.0**0.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(out)
    return str(out)


# Scripted generation: rollout j (global index) of generation batch n succeeds when j % G < k_g, with
# k = (0, 1, 2, 4) rotated by group and by n; completions have different lengths.  Records what it produced.
SCRIPT: dict[tuple[int, int], dict] = {}
K_PER_GROUP = (0, 1, 2, 4)


def scripted_rollout(prompts, trainer):
    tok = trainer.processing_class
    step = trainer._scripted_generations = getattr(trainer, "_scripted_generations", -1) + 1
    offset = trainer.accelerator.process_index * len(prompts)
    out = {"prompt_ids": [], "completion_ids": [], "logprobs": None}
    for i, prompt in enumerate(prompts):
        j = offset + i
        group = j // G
        k = K_PER_GROUP[(group + step) % len(K_PER_GROUP)]
        correct = j % G < k
        text = ("7" if correct else "3") + " 1" * ((j * 7 + step) % 4)
        prompt_ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
        completion_ids = tok(text, add_special_tokens=False)["input_ids"]
        SCRIPT[(step, j)] = {"prompt_ids": list(prompt_ids), "completion_ids": completion_ids, "correct": correct}
        out["prompt_ids"].append(list(prompt_ids))
        out["completion_ids"].append(completion_ids)
    return out


def starts_with_seven(completions, **kwargs):
    return [float(c[-1]["content"].strip().startswith("7")) for c in completions]


def make_config(output_dir, **overrides):
    kwargs = cpu_run_kwargs(
        output_dir=str(output_dir),
        per_device_train_batch_size=4 * G,
        num_generations=G,
        max_completion_length=8,
        temperature=1.0,
        max_steps=2,
        learning_rate=5e-3,
        cov_window_rollout_steps=40,
        likelihood_displacement_optimizer_steps=1,
        likelihood_displacement_rollout_steps=1,
    )
    kwargs.update(overrides)
    return AsymGRPOConfig(**kwargs)


def run_scripted(model_path, output_dir, dataset_size=64, **overrides):
    from asym_trl.apps.tiny import toy_sum_dataset

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    trainer = AsymGRPOTrainer(
        model=str(model_path),
        reward_funcs=starts_with_seven,
        args=make_config(output_dir, **overrides),
        train_dataset=toy_sum_dataset(dataset_size),
        rollout_func=scripted_rollout,
    )
    trainer.train()
    return trainer


def diag_metrics(log_history):
    """The diagnostics of each step's log entry (by step), None values dropped."""
    prefixes = ("groups/", "advantages/", "entropy/", "cov/", "cov_r/", "likelihood_displacement/")
    return {
        h["step"]: {k: v for k, v in h.items() if k.startswith(prefixes) and v is not None}
        for h in log_history
        if "loss" in h
    }


def reference_forward(model, step):
    """Per rollout of generation ``step`` (global order): token log-probs and entropies, one plain forward each."""
    rows = []
    for j in range(4 * G):
        rec = SCRIPT[(step, j)]
        ids = torch.tensor([rec["prompt_ids"] + rec["completion_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(rec["prompt_ids"]) - 1 : -1].double()
        logp_all = torch.log_softmax(logits, dim=-1)
        target = torch.tensor(rec["completion_ids"])
        rows.append(
            {
                "logps": logp_all.gather(1, target[:, None]).squeeze(1),
                "entropy": -(logp_all.exp() * logp_all).sum(-1),
                "correct": rec["correct"],
            }
        )
    return rows


def hand_cov(ref, group, k, reward=False):
    """Eq. 12-13 for one group of step 0 (k successes, Eq. 10 advantages with (0.9, 0.4); or the rewards r, the
    first k rollouts correct), with plain floats."""
    a = [((G - k) / k) ** 0.9] * k + [-((k / (G - k)) ** 0.4)] * (G - k)
    if reward:
        a = [1.0] * k + [0.0] * (G - k)
    x = [ref[group * G + i]["logps"].mean().item() for i in range(G)]
    mx, ma = sum(x) / G, sum(a) / G
    return sum((xi - mx) * (ai - ma) for xi, ai in zip(x, a, strict=True)) / G


def test_trainer_logs_hand_checked_values(model_path, tmp_path):
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(model_path).eval()
    trainer = run_scripted(model_path, tmp_path / "out", max_steps=1)
    logged = diag_metrics(trainer.state.log_history)[1]

    # Step 0 groups: k = (0, 1, 2, 4) -> one all-solved, one none-solved out of 4; one group per level 0, 1, 2, 4.
    assert logged["groups/all_solved"] == 0.25 and logged["groups/none_solved"] == 0.25
    hist = [logged[f"groups/p_{j}of4"] for j in range(G + 1)]
    assert hist == [0.25, 0.25, 0.25, 0.0, 0.25]
    assert logged["groups/epoch_all_solved"] == 0.25 and logged["groups/epoch_none_solved"] == 0.25

    # Eq. 10 with (0.9, 0.4): k=1: A+ = 3^0.9, A- = -(1/3)^0.4; k=2: A+ = 1, A- = -1; k=4: A+ = 0; k=0: A- = 0.
    pos = [3**0.9, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    neg = [-(3**-0.4)] * 3 + [-1.0, -1.0] + [0.0] * 4
    assert logged["advantages/correct_mean"] == pytest.approx(sum(pos) / len(pos))
    assert logged["advantages/incorrect_mean"] == pytest.approx(sum(neg) / len(neg))
    assert logged["advantages/incorrect_abs_mean"] == pytest.approx(-sum(neg) / len(neg))

    # Token entropy on correct / incorrect rollouts, token-weighted, from an independent forward pass.
    ref = reference_forward(before, step=0)
    for name, want in (("correct", True), ("incorrect", False)):
        ent = torch.cat([r["entropy"] for r in ref if r["correct"] == want])
        assert logged[f"entropy/{name}"] == pytest.approx(ent.mean().item(), rel=1e-4)

    # Cov(p), Eq. 12-14, by hand: only the k=1 and k=2 groups are mixed (levels 1 and 2).
    for k in (1, 2):
        assert logged[f"cov/p_{k}of4"] == pytest.approx(hand_cov(ref, group=k, k=k), rel=1e-4, abs=1e-7)
    assert "cov/p_3of4" not in logged  # no group at that level

    # Likelihood displacement after the update, over the correct rollouts.
    after = reference_forward(trainer.model.eval(), step=0)
    deltas = [(a["logps"] - b["logps"]) for a, b in zip(after, ref, strict=True) if b["correct"]]
    per_rollout = sum(d.sum().item() for d in deltas) / len(deltas)
    per_token = sum(d.sum().item() for d in deltas) / sum(len(d) for d in deltas)
    assert per_rollout != 0.0
    assert logged["likelihood_displacement/optimizer_step"] == pytest.approx(per_rollout, rel=1e-3, abs=1e-6)
    assert logged["likelihood_displacement/optimizer_step_per_token"] == pytest.approx(per_token, rel=1e-3, abs=1e-6)
    # One optimizer step per generation: the rollout step is that optimizer step.
    assert logged["likelihood_displacement/rollout_step"] == pytest.approx(per_rollout, rel=1e-3, abs=1e-6)
    assert logged["likelihood_displacement/rollout_step_per_token"] == pytest.approx(per_token, rel=1e-3, abs=1e-6)


def _assert_same_metrics(a, b, rel=1e-4):
    assert a.keys() == b.keys()
    for step in a:
        assert a[step].keys() == b[step].keys(), step
        for key in a[step]:
            assert a[step][key] == pytest.approx(b[step][key], rel=rel, abs=1e-6), (step, key)


def test_metrics_do_not_depend_on_the_split(model_path, tmp_path):
    """Same global batch as one micro-batch, or as 2 / 4 accumulated micro-batches: same logged values."""
    one = diag_metrics(run_scripted(model_path, tmp_path / "a").state.log_history)
    two = diag_metrics(
        run_scripted(
            model_path, tmp_path / "b", per_device_train_batch_size=2 * G, gradient_accumulation_steps=2
        ).state.log_history
    )
    four = diag_metrics(
        run_scripted(
            model_path, tmp_path / "c", per_device_train_batch_size=G, gradient_accumulation_steps=4
        ).state.log_history
    )
    assert {"cov/p_1of4", "entropy/correct", "likelihood_displacement/optimizer_step"} <= one[2].keys()
    _assert_same_metrics(one, two)
    _assert_same_metrics(one, four)


@pytest.mark.parametrize(
    "split",
    [
        dict(per_device_train_batch_size=2 * G, steps_per_generation=2),  # one generation, two optimizer steps
        dict(num_iterations=2),  # the generation batch is trained on twice
    ],
    ids=["steps_per_generation=2", "num_iterations=2"],
)
def test_covariance_uses_the_sampling_policy(model_path, tmp_path, split):
    """When a generation outlives an update, Cov(p) still uses the log-probs of the policy that sampled."""
    from transformers import AutoModelForCausalLM

    trainer = run_scripted(model_path, tmp_path / "out", **split)
    logged = diag_metrics(trainer.state.log_history)
    ref = reference_forward(AutoModelForCausalLM.from_pretrained(model_path).eval(), step=0)
    assert logged[1]["groups/all_solved"] == 0.25 and "groups/all_solved" not in logged[2]  # one generation
    cov = {k: v for step in (1, 2) for k, v in logged[step].items() if k.startswith("cov/")}
    assert cov.keys() == {"cov/p_1of4", "cov/p_2of4"}
    for k in (1, 2):
        assert cov[f"cov/p_{k}of4"] == pytest.approx(hand_cov(ref, group=k, k=k), rel=1e-4, abs=1e-7)
        cov_r = [logged[step].get(f"cov_r/p_{k}of4") for step in (1, 2)]
        assert next(v for v in cov_r if v is not None) == pytest.approx(
            hand_cov(ref, group=k, k=k, reward=True), rel=1e-4, abs=1e-7
        )
    assert {"entropy/correct", "likelihood_displacement/optimizer_step"} <= logged[1].keys() & logged[2].keys()
    # The paper's measure (Fig. 2 d,h): after both optimizer steps of the rollout step, over all 7 correct
    # rollouts of the generation batch (groups k = 0, 1, 2, 4), against the policy that sampled them.
    after = reference_forward(trainer.model.eval(), step=0)
    deltas = [(a["logps"] - b["logps"]).sum().item() for a, b in zip(after, ref, strict=True) if b["correct"]]
    tokens = sum(len(b["logps"]) for b in ref if b["correct"])
    assert len(deltas) == 7 and "likelihood_displacement/rollout_step" not in logged[1]
    assert logged[2]["likelihood_displacement/rollout_step"] == pytest.approx(sum(deltas) / 7, rel=1e-3, abs=1e-6)
    per_token = logged[2]["likelihood_displacement/rollout_step_per_token"]
    assert per_token == pytest.approx(sum(deltas) / tokens, rel=1e-3, abs=1e-6)


def test_rollout_step_counts_the_papers_training_steps():
    # Qwen3-4B recipe: GA 32, 64 micro-steps per generation -> 2 optimizer steps per rollout step
    assert [diag.rollout_step(s, 32, 64, 1) for s in (0, 1, 2, 3, 79, 80)] == [0, 0, 1, 1, 39, 40]
    assert [diag.rollout_step(s, 1, 2, 2) for s in (0, 3, 4)] == [0, 0, 1]  # num_iterations 2: 4 steps each


def test_covariance_window_counts_rollout_steps(model_path, tmp_path):
    """Two optimizer steps per generation, a window of 2 rollout steps: Cov(p) from the generations of optimizer
    steps 0 and 2 (logged at the end of each generation's first pass, entries 2 and 4), none from step 4."""
    trainer = run_scripted(
        model_path, tmp_path / "out", max_steps=6, steps_per_generation=2, cov_window_rollout_steps=2
    )
    logged = diag_metrics(trainer.state.log_history)
    assert [s for s in sorted(logged) if any(k.startswith("cov/") for k in logged[s])] == [2, 4]


def test_covariance_window_and_displacement_period(model_path, tmp_path):
    trainer = run_scripted(
        model_path,
        tmp_path / "out",
        max_steps=3,
        cov_window_rollout_steps=1,
        likelihood_displacement_optimizer_steps=2,
    )
    logged = diag_metrics(trainer.state.log_history)
    assert "cov/p_1of4" in logged[1] and not any(k.startswith("cov/") for k in logged[2] | logged[3])
    assert "likelihood_displacement/optimizer_step" in logged[2]
    assert "likelihood_displacement/optimizer_step" not in logged[1] | logged[3]


def test_rollout_displacement_period_counts_rollout_steps(model_path, tmp_path):
    """Two optimizer steps per rollout step, every 2nd rollout step: rollout step 1 (optimizer steps 3-4) only."""
    trainer = run_scripted(
        model_path,
        tmp_path / "out",
        max_steps=4,
        per_device_train_batch_size=2 * G,
        steps_per_generation=2,
        likelihood_displacement_rollout_steps=2,
        likelihood_displacement_optimizer_steps=0,
    )
    logged = diag_metrics(trainer.state.log_history)
    assert [s for s in sorted(logged) if "likelihood_displacement/rollout_step" in logged[s]] == [4]
    assert not any("likelihood_displacement/optimizer_step" in m for m in logged.values())
    # Every log entry carries its rollout step (the plots' x-axis): two optimizer steps each.
    assert [h["rollout_step"] for h in trainer.state.log_history if "loss" in h] == [0.5, 1.0, 1.5, 2.0]


def test_epoch_shares_ride_on_trls_own_log_entries(model_path, tmp_path):
    """8 prompts = 2 steps per epoch, logging_steps=3: no extra entry (TRL's metrics stay in every one); each entry
    carries the last closed epoch's exact shares, never an average of two epochs; every epoch is in epoch_history."""
    trainer = run_scripted(model_path, tmp_path / "out", dataset_size=8, max_steps=5, logging_steps=3)
    entries = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    assert sorted(entries) == [3]
    assert {"reward", "reward_std", "frac_reward_zero_std", "clip_ratio/region_mean"} <= entries[3].keys()
    # Generations 0-1, 2-3 and 4: k per group rotates (0, 1, 2, 4), so each has 1 all- and 1 none-solved of 4.
    assert entries[3]["groups/epoch_index"] == 1 and entries[3]["groups/epoch_all_solved"] == 0.25
    history = trainer.diagnostics.epoch_history
    assert [(e["step"], e["epoch_index"]) for e in history] == [(2, 1), (4, 2), (5, 3)]
    assert all(e["epoch_all_solved"] == 0.25 and e["epoch_none_solved"] == 0.25 for e in history)


def test_diagnostics_off_logs_nothing(model_path, tmp_path):
    trainer = run_scripted(
        model_path,
        tmp_path / "out",
        max_steps=1,
        log_diagnostics=False,
        likelihood_displacement_optimizer_steps=0,
        likelihood_displacement_rollout_steps=0,
        skip_zero_signal=False,  # TRL's loss and metric names (the skip renames entropy: test_zero_signal.py)
    )
    assert diag_metrics(trainer.state.log_history) == {1: {}}
    assert not any(type(cb).__name__ == "_DiagnosticsCallback" for cb in trainer.callback_handler.callbacks)
    assert "rollout_index" not in trainer._buffered_inputs[0]
    assert "entropy" in trainer.state.log_history[0]  # TRL's own metrics still there


def test_config_rejects_bad_diagnostics_settings(tmp_path):
    with pytest.raises(ValueError, match="cov_window_rollout_steps"):
        make_config(tmp_path, cov_window_rollout_steps=-1)
    with pytest.raises(ValueError, match="needs log_diagnostics"):
        make_config(tmp_path, log_diagnostics=False, likelihood_displacement_optimizer_steps=2)
    with pytest.raises(ValueError, match="likelihood_displacement_rollout_steps > 0 needs log_diagnostics"):
        make_config(tmp_path, log_diagnostics=False, likelihood_displacement_optimizer_steps=0)
    with pytest.raises(ValueError, match="likelihood_displacement_rollout_steps"):
        make_config(tmp_path, likelihood_displacement_rollout_steps=-1)


# (1-process overrides, per-process overrides of the 2-process run): the same global batches.
TWO_PROCESS_CASES = {
    "2 groups per process": ({}, {"per_device_train_batch_size": 2 * G}),
    # A generation batch is one group split over the 2 processes; 4 generations per optimizer step.
    "groups split across processes": (
        {"per_device_train_batch_size": G, "gradient_accumulation_steps": 4, "steps_per_generation": 1},
        {"per_device_train_batch_size": G // 2, "gradient_accumulation_steps": 4, "steps_per_generation": 1},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(TWO_PROCESS_CASES))
def test_two_processes_log_what_one_process_logs(model_path, tmp_path, case):
    """torchrun with 2 CPU processes (gloo) logs the values of the 1-process run on the same global batches."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    one_process, per_process = TWO_PROCESS_CASES[case]
    single = diag_metrics(run_scripted(model_path, tmp_path / "one", **one_process).state.log_history)
    out = tmp_path / "two.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    cmd += [str(Path(__file__).resolve()), model_path, str(tmp_path / "two"), str(out), json.dumps(per_process)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["num_processes"] == 2
    two = {int(k): v for k, v in result["metrics"].items()}
    assert {"cov/p_2of4", "entropy/incorrect", "likelihood_displacement/optimizer_step"} <= two[2].keys()
    _assert_same_metrics(single, two)


if __name__ == "__main__":  # one process of the 2-process test
    model_path, output_dir, out_json, overrides = sys.argv[1:5]
    random.seed(0)
    trainer = run_scripted(model_path, output_dir, **json.loads(overrides))
    if trainer.accelerator.is_main_process:
        result = {
            "num_processes": trainer.accelerator.num_processes,
            "metrics": diag_metrics(trainer.state.log_history),
        }
        Path(out_json).write_text(json.dumps(result))


def test_a_resumed_run_logs_what_the_straight_run_logs(model_path, tmp_path):
    """The epoch's group counts and the Cov(p) window are saved in checkpoints: resuming from step 2 of a 6-step run
    (4 steps per epoch) logs the straight run's diagnostics, epoch-wise shares at step 4 included."""
    common = dict(dataset_size=16, max_steps=6, save_strategy="steps", save_steps=2)
    straight = run_scripted(model_path, tmp_path / "a", **common)
    checkpoint = tmp_path / "a" / "checkpoint-2"
    assert json.loads((checkpoint / "group_diagnostics.json").read_text())["cov_totals"] is not None

    from asym_trl.apps.tiny import toy_sum_dataset

    resumed = AsymGRPOTrainer(
        model=str(model_path),
        reward_funcs=starts_with_seven,
        args=make_config(tmp_path / "b", **{k: v for k, v in common.items() if k != "dataset_size"}),
        train_dataset=toy_sum_dataset(16),
        rollout_func=scripted_rollout,
    )
    resumed._scripted_generations = 1  # the script continues at generation 2, as in the straight run
    resumed.train(resume_from_checkpoint=str(checkpoint))
    want = {step: m for step, m in diag_metrics(straight.state.log_history).items() if step > 2}
    got = {step: m for step, m in diag_metrics(resumed.state.log_history).items() if step > 2}
    assert "groups/epoch_all_solved" in want[4] and "cov/p_1of4" in want[4]
    _assert_same_metrics(want, got)
