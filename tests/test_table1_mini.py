"""CI smoke of the testbed study runner (experiments/table1_mini.py): 2 methods x 1 seed x 2 steps through
``asym_trl.train`` and the recipes; checks the pipeline and the metrics JSON, not the science."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _runner():
    spec = importlib.util.spec_from_file_location("table1_mini", ROOT / "experiments" / "table1_mini.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_table1_row_has_a_recipe():
    runner = _runner()
    assert {f"{m}.yaml" for m, _ in runner.METHODS} == {p.name for p in runner.RECIPES.glob("*.yaml")}
    assert len(runner.METHODS) == 14


def test_verdict_rule():
    runner = _runner()
    assert runner.verdict([0.1, 0.2, 0.15], +1).startswith("supported")
    assert runner.verdict([0.1, 0.2, 0.15], -1).startswith("not supported")
    assert runner.verdict([-0.1, 0.2, 0.0], +1).startswith("inconclusive")
    assert runner.verdict([0.1], +1).startswith("inconclusive")


@pytest.mark.slow
def test_smoke_two_methods_one_seed(tmp_path, monkeypatch):
    runner = _runner()
    args = ["--out", str(tmp_path), "--methods", "grpo", "asym", "--seeds", "0", "--steps", "2", "--checkpoints", "1"]
    args += ["--sft-steps", "5", "--num-test", "4", "--num-validation", "4", "--n", "8", "--val-n", "2"]
    assert runner.main(args) == 0
    for method in ("grpo", "asym"):
        run = json.loads((tmp_path / "runs" / f"{method}-s0.json").read_text())
        test = run["test"]
        for key in ("sampled_accuracy", "greedy_accuracy", "all_solved", "none_solved"):
            assert 0 <= test[key] <= 1
        assert test["entropy"] > 0 and {"entropy_correct", "entropy_incorrect"} <= set(test)
        assert set(test["pass_at_k"]) == {"1", "2", "4", "8"}  # JSON keys
        assert all(0 <= v <= 1 for v in test["pass_at_k"].values())
        assert list(test["pass_at_k"].values()) == sorted(test["pass_at_k"].values())  # pass@k rises with k
        assert [p["step"] for p in run["validation_curve"]] == [0, 2]
        assert run["training_curve"] and "entropy" in run["training_curve"][0]
    table = (tmp_path / "table.md").read_text()
    assert "| GRPO | 1 |" in table and "AsymGRPO beats GRPO (accuracy): inconclusive" in table
    mtime = (tmp_path / "runs" / "grpo-s0.json").stat().st_mtime
    assert runner.main(args) == 0  # resumable: existing runs are skipped
    assert (tmp_path / "runs" / "grpo-s0.json").stat().st_mtime == mtime
