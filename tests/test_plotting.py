"""Plots of a finished run (asym_trl/diagnostics/plotting.py): from a real tiny training run's trainer_state.json."""

from __future__ import annotations

import json

import pytest

from asym_trl import AsymGRPOConfig, AsymGRPOTrainer
from asym_trl.apps.tiny import cpu_run_kwargs, toy_sum_dataset
from asym_trl.cli import main as cli_main
from asym_trl.diagnostics.measures import rollout_steps_done
from asym_trl.diagnostics.plotting import PANELS, ema, load_log_history, make_figure, plot_runs, rollout_axis


def digit_first(completions, **kwargs):
    """1 when a digit appears in the first 3 characters: the random tiny model gets mixed groups."""
    return [float(any(ch.isdigit() for ch in c[-1]["content"][:3])) for c in completions]


@pytest.fixture(scope="module")
def run_dir(tiny_model_path, tmp_path_factory):
    """A real run: 2 epochs of 2 steps, validation every 2 steps, displacement every 2 steps."""
    out = tmp_path_factory.mktemp("run")
    args = AsymGRPOConfig(
        **cpu_run_kwargs(),
        output_dir=str(out),
        per_device_train_batch_size=16,
        num_generations=4,
        max_completion_length=6,
        num_train_epochs=2,
        learning_rate=3e-3,
        likelihood_displacement_rollout_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        per_device_eval_batch_size=8,
    )
    trainer = AsymGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=digit_first,
        args=args,
        train_dataset=toy_sum_dataset(8),
        eval_dataset=toy_sum_dataset(2, seed=1),
    )
    trainer.train()
    return out


def test_plot_of_a_real_run_has_every_panel(run_dir):
    from matplotlib.image import imread

    history = load_log_history(run_dir)  # written by the trainer at the end of training
    assert any("groups/epoch_all_solved" in h for h in history) and any("eval_reward" in h for h in history)
    evals = [h for h in history if "eval_reward" in h]
    assert all({"eval_groups/all_solved", "eval_entropy/incorrect"} <= h.keys() for h in evals)  # eval diagnostics
    fig = make_figure([history], ["asym"])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == list(PANELS)
    for ax in fig.axes:
        assert any(len(line.get_xdata()) > 0 for line in ax.lines), ax.get_title()
        assert not ax.texts, f"{ax.get_title()} says {ax.texts[0].get_text()!r}"
        assert ax.get_xlabel() and ax.get_ylabel()
        assert ax.get_legend() is not None
    solved = fig.axes[2]
    assert [list(line.get_xdata()) for line in solved.lines] == [[1.0, 2.0], [1.0, 2.0]]  # one point per epoch
    # One optimizer step per generation here: the x-axis is in rollout steps, which equal the optimizer steps.
    assert all(h["rollout_step"] == h["step"] for h in history) and rollout_axis(history) == 1.0
    assert fig.axes[0].get_xlabel() == "training step (rollout steps)"

    png = plot_runs(run_dir)
    assert png == run_dir / "diagnostics.png"
    image = imread(png)
    assert image.shape[:2] == (int(9.5 * 110), 16 * 110)
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_cli_plot_compares_runs(run_dir, tmp_path, capsys):
    out = tmp_path / "cmp.png"
    assert (
        cli_main(["plot", str(run_dir), str(run_dir / "trainer_state.json"), "-o", str(out), "--labels", "a", "b"])
        == 0
    )
    assert capsys.readouterr().out.strip() == str(out)
    assert out.stat().st_size > 10_000
    with pytest.raises(SystemExit):
        cli_main(["plot", str(run_dir), "--labels", "a", "b"])


def test_missing_metrics_are_named_not_blank():
    history = [{"step": s, "epoch": s / 2, "reward": 0.1 * s, "entropy": 1.0 / s} for s in range(1, 5)]
    fig = make_figure([history], ["plain TRL"])
    empty = {ax.get_title(): ax.texts[0].get_text() for ax in fig.axes if ax.texts}
    assert "likelihood_displacement_rollout_steps" in empty["(d) Likelihood displacement (correct rollouts)"]
    assert set(empty) == {PANELS[2], PANELS[3], PANELS[4], PANELS[5]}


def test_validation_accuracy_in_percent_gets_its_own_axis():
    # ValidationCallback (asym_trl.diagnostics.validation) logs val/<benchmark> and val/avg in percent every N steps.
    history = [{"step": s, "reward": 0.1 * s, **({"val/avg": 10.0 * s} if s % 2 == 0 else {})} for s in range(1, 5)]
    fig = make_figure([history], ["run"])
    twin = fig.axes[-1]
    assert len(fig.axes) == 7 and "validation accuracy (%)" in twin.get_ylabel()
    assert list(twin.lines[0].get_xdata()) == [2, 4] and list(twin.lines[0].get_ydata()) == [20.0, 40.0]  # raw
    assert list(twin.lines[1].get_ydata()) == pytest.approx([20.0, 26.0])  # EMA 0.7: 0.7 * 20 + 0.3 * 40
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert legend == ["run: train reward", "run: val accuracy (avg) (EMA 0.7)"]
    raw = make_figure([history], ["run"], ema_factor=0).axes[-1]
    assert len(raw.lines) == 1 and list(raw.lines[0].get_ydata()) == [20.0, 40.0]


def test_ema_is_the_papers():
    # App. C: s_t = 0.7 s_{t-1} + 0.3 x_t, s_0 = x_0.
    # 10; 0.7*10 + 0.3*20 = 13; 0.7*13 + 0.3*0 = 9.1; 0.7*9.1 + 0.3*30 = 15.37
    assert ema([10.0, 20.0, 0.0, 30.0]) == pytest.approx([10.0, 13.0, 9.1, 15.37])
    assert ema([1.0, 5.0], factor=0.0) == [1.0, 5.0] and ema([]) == []
    with pytest.raises(ValueError, match="EMA factor"):
        ema([1.0], factor=1.0)


def test_x_axis_is_in_rollout_steps():
    # Qwen3-4B recipe: GA 32, 64 micro-steps per generation -> 2 optimizer steps per rollout step.
    assert rollout_steps_done(80, 32, 64, 1) == 40.0 and rollout_steps_done(3, 32, 64, 1) == 1.5
    assert rollout_steps_done(3, 1, 2, 2) == 0.75  # num_iterations 2: 4 optimizer steps per rollout step
    history = [
        {"step": s, "rollout_step": s / 2, "entropy": 1.0 / s, **({"val/avg": 10.0 * s} if s % 2 == 0 else {})}
        for s in range(1, 5)
    ]
    fig = make_figure([history], ["run"])
    assert list(fig.axes[0].lines[0].get_xdata()) == [0.5, 1.0, 1.5, 2.0]
    assert list(fig.axes[-1].lines[0].get_xdata()) == [1.0, 2.0]  # validation too
    assert fig.axes[0].get_xlabel() == "training step (rollout steps)"
    plain = [{k: v for k, v in h.items() if k != "rollout_step"} for h in history]  # plain TRL: optimizer steps
    fig = make_figure([plain], ["trl"])
    assert (
        list(fig.axes[0].lines[0].get_xdata()) == [1, 2, 3, 4] and fig.axes[0].get_xlabel() == "optimizer step (TRL)"
    )


def test_runs_of_one_epoch_show_per_step_shares():
    # The quickstart: one (partial) epoch, so one epoch-wise point; the panel shows the per-step shares instead.
    history = [
        {"step": s, "epoch": s / 4, "groups/all_solved": 0.1 * s, "groups/none_solved": 0.5 - 0.1 * s}
        for s in range(1, 5)
    ]
    history[-1] |= {"groups/epoch_all_solved": 0.25, "groups/epoch_none_solved": 0.25}
    solved = make_figure([history], ["run"]).axes[2]
    (x_all, y_all), (x_none, y_none) = [(list(ln.get_xdata()), list(ln.get_ydata())) for ln in solved.lines]
    assert x_all == x_none == [0.25, 0.5, 0.75, 1.0]
    assert y_all == pytest.approx([0.1, 0.2, 0.3, 0.4]) and y_none == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert all("per step" in t.get_text() for t in solved.get_legend().get_texts())


def test_epoch_shares_fall_back_to_per_step_shares():
    # No epoch-wise entries: per-step shares averaged by epoch (an entry at epoch e + f closes epoch e + 1).
    history = [
        {"step": 1, "epoch": 0.5, "groups/all_solved": 0.2, "groups/none_solved": 0.6},
        {"step": 2, "epoch": 1.0, "groups/all_solved": 0.4, "groups/none_solved": 0.2},
        {"step": 3, "epoch": 1.5, "groups/all_solved": 1.0, "groups/none_solved": 0.0},
    ]
    solved = make_figure([history], ["run"]).axes[2]
    (x_all, y_all), (x_none, y_none) = [(list(ln.get_xdata()), list(ln.get_ydata())) for ln in solved.lines]
    assert x_all == [1, 2] and y_all == pytest.approx([0.3, 1.0]) and y_none == pytest.approx([0.4, 0.0])


def test_cov_curve_uses_the_last_window_value():
    history = [
        {"step": 1, "cov/p_1of4": 0.5, "cov/p_2of4": 0.1},
        {"step": 2, "cov/p_1of4": 0.7, "cov/p_3of4": -0.2},
        {"step": 3, "reward": 0.3},
    ]
    line = make_figure([history], ["run"]).axes[4].lines[0]
    assert list(line.get_xdata()) == [0.25, 0.5, 0.75] and list(line.get_ydata()) == [0.7, 0.1, -0.2]


def test_load_log_history_finds_the_newest_checkpoint(tmp_path):
    for step in (2, 10):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": step}]}))
    assert load_log_history(tmp_path) == [{"step": 10}]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_log_history(tmp_path / "checkpoint-2" / "missing.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no trainer_state.json"):
        load_log_history(tmp_path / "empty")
    (tmp_path / "trainer_state.json").write_text("{}")
    with pytest.raises(ValueError, match="log_history"):
        load_log_history(tmp_path)


def test_quickstart_figure_draws_train_entropy_only_where_it_was_logged(tmp_path):
    """With the zero-signal skip (default), steps that skipped rows log entropy/informative instead of entropy."""
    from asym_trl.diagnostics.plotting import plot_quickstart

    keys = ("greedy_accuracy", "sampled_accuracy", "all_solved", "none_solved", "entropy_correct", "entropy_incorrect")
    summary = {"before": dict.fromkeys(keys, 0.2), "after": dict.fromkeys(keys, 0.4), "settings": {"num_test": 10}}
    history = [
        {"step": 5, "reward": 0.3, "entropy": 0.5},
        {"step": 10, "reward": 0.4, "entropy/informative": 0.45},  # a window whose every step skipped rows
        {"step": 10, "heldout/sampled_accuracy": 0.3, "heldout/greedy_accuracy": 0.5}
        | {"heldout/entropy_correct": 0.4, "heldout/entropy_incorrect": 0.5},
    ]
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    assert plot_quickstart(tmp_path).stat().st_size > 0
