"""The testbed study runner (experiments/testbed.py): its metrics and its claim analysis on hand-made results, and a
CI smoke (2 methods x 2 seeds x 3 steps through asym_trl.train and the recipes) that checks the pipeline and the
JSON, not the science."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from asym_trl.diagnostics.seed_stats import holm, paired_t

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runner():
    spec = importlib.util.spec_from_file_location("testbed", ROOT / "experiments" / "testbed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["testbed"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_method_has_a_recipe_and_every_claim_names_known_methods(runner):
    assert {f"{m}.yaml" for m in runner.METHODS} == {p.name for p in runner.RECIPES.glob("*.yaml")}
    assert sorted(m for study in runner.STUDIES.values() for m in study) == sorted(runner.METHODS)
    for claim in runner.CLAIMS:
        assert {claim.a, claim.b} <= set(runner.METHODS) and claim.sign in (-1, 1)
    assert [c.id for c in runner.CLAIMS].count("P1") == 1 and len(runner.CLAIMS) == 19


def test_ema_drop(runner):
    # EMA (alpha 0.5) of 0.2, 0.6, 0.2: 0.2, 0.4, 0.3 -> best 0.4 - last 0.3
    assert runner.ema_drop([0.2, 0.6, 0.2]) == pytest.approx(0.1)
    assert runner.ema_drop([0.1, 0.2, 0.3]) == 0.0  # still rising: no degradation


def test_derived_metrics_read_the_last_epoch(runner):
    curve = [
        {"epoch": 0.5, "reward": 0.2, "entropy": 1.0, "clip_ratio/high_max": 0.0},
        {"epoch": 1.0, "reward": 0.4, "entropy": 0.8, "entropy/correct": None},
        {"epoch": 1.5, "reward": 0.6, "entropy": 0.6, "entropy/correct": 0.5, "clip_ratio/high_max": 0.25},
        {"epoch": 2.0, "reward": 0.8, "entropy": 0.4, "entropy/correct": 0.3},
    ]
    epochs = [{"epoch_index": 1, "epoch_none_solved": 0.3}, {"epoch_index": 2, "epoch_none_solved": 0.1}]
    derived = runner.derived_metrics(curve, epochs)
    assert derived["train_entropy"] == pytest.approx(0.5)  # steps of epoch 2 only
    assert derived["train_entropy_correct"] == pytest.approx(0.4)
    assert derived["train_reward_first_epoch"] == pytest.approx(0.3)
    assert derived["none_solved_last_epoch"] == 0.1 and derived["clip_high_max"] == 0.25


def _results(runner, effects: dict[str, list[float]], clip: float = 0.1):
    """Fake per-seed metrics: every method 0.5 on every metric, plus ``effects[method]`` per seed."""
    metrics = ("sampled_accuracy", "train_entropy", "none_solved_last_epoch", "val_ema_drop")
    results = {}
    for method in runner.METHODS:
        bumps = effects.get(method, [0.0] * 4)
        results[method] = {s: {k: 0.5 + b for k in metrics} | {"clip_high_max": clip} for s, b in enumerate(bumps)}
    return results


def test_judge_paired_t_and_holm_over_the_family(runner):
    asym = [0.05, 0.07, 0.06, 0.08]  # AsymGRPO above every other method on every seed
    rows = {row["id"]: row for row in runner.judge(_results(runner, {"asym": asym}))}
    expected = paired_t(asym)
    assert rows["P1"]["effect"] == pytest.approx(expected.mean) and rows["P1"]["p"] == pytest.approx(expected.p)
    p_values = [row["p"] for row in rows.values()]
    assert [row["p_holm"] for row in rows.values()] == pytest.approx(holm(p_values))
    # P1 and T1-T4 share the same differences: 5 of the 19 at p, Holm multiplies the smallest by 19
    assert rows["P1"]["p_holm"] == pytest.approx(min(1.0, 19 * expected.p))
    assert rows["S1"]["verdict"] == "not shown"  # zero differences: p = 1


def test_judge_verdict_words(runner):
    big = [0.30, 0.31, 0.29, 0.30]
    rows = {row["id"]: row for row in runner.judge(_results(runner, {"asym": big, "ent-increase": big}))}
    assert rows["P1"]["verdict"] == "supported"
    assert rows["F4"]["verdict"] == "contradicted"  # EntIncrease predicted below GRPO, measured above
    assert rows["F2"]["verdict"] == "supported"  # ... and its entropy above, as predicted


def test_judge_not_testable_and_not_run(runner):
    results = _results(runner, {}, clip=0.0)
    del results["dr-grpo"]
    rows = {row["id"]: row for row in runner.judge(results)}
    assert rows["C1"]["verdict"].startswith("not testable") and "p" not in rows["C1"]
    assert rows["T1"]["verdict"] == "not run" and rows["T1"]["p_holm"] == 1.0


@pytest.mark.slow
def test_smoke_two_methods_two_seeds(runner, tmp_path):
    args = ["--out", str(tmp_path), "--methods", "grpo", "asym", "--seeds", "0", "1", "--max-steps", "3"]
    args += ["--sft-steps", "20", "--p-range", "0", "1", "--pool-size", "32", "--num-validation", "8"]
    args += ["--max-test", "8", "--n", "4", "--val-n", "2", "--results", str(tmp_path / "docs" / "results.json")]
    assert runner.main(args) == 0
    for method in ("grpo", "asym"):
        run = json.loads((tmp_path / "runs" / f"{method}-s0.json").read_text())
        test = run["test"]
        for key in ("sampled_accuracy", "greedy_accuracy", "all_solved", "none_solved"):
            assert 0 <= test[key] <= 1
        assert set(test["pass_at_k"]) == {"1", "2", "4"}  # JSON keys
        assert list(test["pass_at_k"].values()) == sorted(test["pass_at_k"].values())  # pass@k rises with k
        assert [p["step"] for p in run["validation_curve"]] == [0, 3]  # warm start + the final checkpoint
        assert [h["step"] for h in run["training_curve"]] == [1, 2, 3]
        assert {"entropy", "reward", "groups/p_0of8"} <= set(run["training_curve"][0])
        assert run["derived"]["train_entropy"] > 0 and 0 <= run["derived"]["none_solved_last_epoch"] <= 1
        assert not list((tmp_path / "train" / f"{method}-s0").glob("checkpoint-*"))  # evaluated, then dropped
    results = json.loads((tmp_path / "docs" / "results.json").read_text())
    assert results["seeds"] == {"grpo": 2, "asym": 2} and results["seeds_min"] == 2
    assert results["correction"] == "holm" and len(results["verdicts"]) == 19
    assert {"train_p_mean_warm_start", "grpo_gain", "clip_high_active", "gate"} <= set(results)
    assert results["verdicts"][0]["id"] == "P1" and results["verdicts"][0]["n"] == 2
    mtime = (tmp_path / "runs" / "grpo-s0.json").stat().st_mtime
    assert runner.main(args) == 0  # resumable: existing runs are skipped
    assert (tmp_path / "runs" / "grpo-s0.json").stat().st_mtime == mtime
