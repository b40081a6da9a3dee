"""Paper-style plots of finished runs, read from ``trainer_state.json`` (no re-run).

``plot_runs(["runs/grpo", "runs/asym"])`` (or ``asym-trl plot runs/grpo runs/asym``) draws, one line per run:

(a) policy entropy, overall and on correct / incorrect rollouts (§3.1: informative vs spurious entropy);
(b) training reward and validation reward/accuracy (Fig. 2 b,f; ``val/avg`` of
    :class:`asym_trl.diagnostics.validation.ValidationCallback`, in %, on a right-hand axis), validation curves
    smoothed by the paper's EMA (App. C: ``s_t = 0.7 s_{t-1} + 0.3 x_t``) over faint raw points;
(c) epoch-wise shares of all-solved and none-solved groups (Fig. 2 c,g); a run of at most one epoch (the
    quickstart's) has one such point, so it shows its per-step shares instead;
(d) likelihood displacement of correct rollouts after each rollout step (Fig. 2 d,h);
(e) Cov(p) over the covariance window against group accuracy p (Fig. 1 c, App. B);
(f) mean |advantage| on correct and incorrect rollouts (the reweighting of Fig. 1 a,b).

Step curves are drawn against the paper's training steps, rollout steps (``rollout_step``, which
:class:`asym_trl.diagnostics.groups.GroupDiagnostics` adds to each log entry: optimizer steps x
``gradient_accumulation_steps / (steps_per_generation x num_iterations)``); a run without it (plain TRL, or
``log_diagnostics=False``) keeps TRL's optimizer steps, and the axis says which.  A panel whose metrics a run did
not log says so instead of staying blank.  :func:`plot_quickstart` draws the
quickstart's before/after figure (``quickstart.png``).  The metric names are those
written by :class:`asym_trl.AsymGRPOTrainer` (see ``docs/diagnostics.md``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from ..errors import OneLineParser, UsageError, one_line_errors

__all__ = ["PANELS", "ema", "load_log_history", "make_figure", "plot_quickstart", "plot_runs", "rollout_axis", "main"]

PANELS = (
    "(a) Policy entropy",
    "(b) Reward and validation accuracy",
    "(c) Group composition per epoch",
    "(d) Likelihood displacement (correct rollouts)",
    "(e) Cov(p): log-prob vs advantage",
    "(f) Advantage magnitude",
)
_COV_KEY = re.compile(r"^cov/p_(\d+)of(\d+)$")


def load_log_history(path: str | Path) -> list[dict]:
    """The log history of a run: ``path`` is a ``trainer_state.json``, a directory holding one, or an output
    directory whose newest ``checkpoint-N`` holds one."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "trainer_state.json"]
        checkpoints = sorted(path.glob("checkpoint-*/trainer_state.json"), key=lambda p: _step_of(p.parent))
        candidates += checkpoints[::-1]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"no trainer_state.json in {path} or its checkpoint-* folders; AsymGRPOTrainer writes it at the end "
                "of training (log_diagnostics=True), or call trainer.save_state()"
            )
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    state = json.loads(path.read_text())
    if "log_history" not in state:
        raise ValueError(f"{path} has no 'log_history': is it a transformers trainer_state.json?")
    return state["log_history"]


def _step_of(checkpoint: Path) -> int:
    match = re.search(r"(\d+)$", checkpoint.name)
    return int(match.group(1)) if match else -1


PAPER_EMA = 0.7  # App. C: validation accuracy curves are smoothed by an EMA with factor 0.7


def ema(values: Sequence[float], factor: float = PAPER_EMA) -> list[float]:
    """Exponential moving average ``s_t = factor * s_{t-1} + (1 - factor) * x_t`` (App. C), ``s_0 = x_0`` (the
    paper does not say how it starts; this is TensorBoard's and wandb's smoothing without bias correction)."""
    if not 0.0 <= factor < 1.0:
        raise ValueError(f"EMA factor={factor} must be in [0, 1) (0 = no smoothing)")
    out: list[float] = []
    for x in values:
        out.append(x if not out else factor * out[-1] + (1.0 - factor) * x)
    return out


def rollout_axis(history: list[dict]) -> float | None:
    """Rollout steps per optimizer step of a run (``rollout_step / step`` of its log entries), or None when its
    entries carry no ``rollout_step`` (the x-axis then stays in optimizer steps)."""
    for entry in reversed(history):
        if entry.get("step") and isinstance(entry.get("rollout_step"), (int, float)):
            return entry["rollout_step"] / entry["step"]
    return None


def _series(history: list[dict], key: str, x: str = "step", smooth: int = 1) -> tuple[list[float], list[float]]:
    """``key`` against ``x``; ``x="step"`` is in rollout steps when the run says how (:func:`rollout_axis`)."""
    scale = rollout_axis(history) if x == "step" else None
    xs, ys = [], []
    for entry in history:
        value = entry.get(key)
        if isinstance(value, (int, float)) and value == value and x in entry:  # value == value: not NaN
            xs.append(entry[x] * scale if scale is not None else entry[x])
            ys.append(float(value))
    if smooth > 1 and ys:  # trailing moving average
        ys = [
            sum(ys[max(0, i - smooth + 1) : i + 1]) / len(ys[max(0, i - smooth + 1) : i + 1]) for i in range(len(ys))
        ]
    return xs, ys


def _epoch_shares(history: list[dict], key: str) -> tuple[list[float], list[float], str]:
    """Epoch-wise shares (Fig. 2 c,g), and how they were made.  A run of at most one epoch has one epoch-wise
    point: it gets its per-step shares at their fractional epoch.  Longer runs without epoch-wise entries get the
    per-step shares averaged within each epoch."""
    steps = _series(history, f"groups/{key}", x="epoch")
    if steps[0] and max(steps[0]) <= 1:
        return *steps, "per step"
    xs, ys = _series(history, f"groups/epoch_{key}", x="epoch")
    if xs:
        return xs, ys, "per epoch"
    per_epoch: dict[int, list[float]] = {}
    for epoch, value in zip(*steps, strict=True):
        per_epoch.setdefault(int(-(-epoch // 1)), []).append(value)  # an entry at epoch e+f belongs to epoch e+1
    return list(per_epoch), [sum(v) / len(v) for v in per_epoch.values()], "per epoch"


def _cov_curve(history: list[dict]) -> tuple[list[float], list[float]]:
    """Cov(p) per level from the last logged value of each ``cov/p_JofG`` (the window average)."""
    last: dict[float, float] = {}
    for entry in history:
        for key, value in entry.items():
            match = _COV_KEY.match(key)
            if match and isinstance(value, (int, float)) and value == value:
                last[int(match.group(1)) / int(match.group(2))] = float(value)
    ps = sorted(last)
    return ps, [last[p] for p in ps]


def _validation_keys(history: list[dict]) -> list[str]:
    keys = {k for entry in history for k in entry if k.startswith("eval_")}
    wanted = [k for k in sorted(keys) if "accuracy" in k or k == "eval_reward"]
    return wanted


def _validation(ax, xs, ys, style, color, label, ema_factor):
    """A validation curve: the paper's EMA as a line over the faint raw points (raw only at ``ema_factor=0``)."""
    if ema_factor and ys:
        ax.plot(xs, ys, style[0], color=color, ms=3, alpha=0.3)
        ax.plot(xs, ema(ys, ema_factor), style[1:], color=color, label=f"{label} (EMA {ema_factor:g})")
    else:
        ax.plot(xs, ys, style, color=color, ms=3, label=label)


def make_figure(
    histories: Sequence[list[dict]], labels: Sequence[str], smooth: int = 1, ema_factor: float = PAPER_EMA
):
    """A matplotlib ``Figure`` with the six panels of ``PANELS``, one color per run; validation curves smoothed by
    :func:`ema` with ``ema_factor`` (the paper's 0.7; 0 = raw)."""
    from matplotlib.figure import Figure

    if len(histories) != len(labels):
        raise ValueError(f"got {len(histories)} runs but {len(labels)} labels")
    if not histories:
        raise ValueError("no run to plot")
    fig = Figure(figsize=(16, 9.5), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    for ax, title in zip(axes, PANELS, strict=True):
        ax.set_title(title, fontsize=11)
        ax.grid(alpha=0.3)
    a_ent, a_acc, a_solved, a_disp, a_cov, a_adv = axes
    # Greedy validation accuracy in percent (val/avg, the paper's average validation accuracy) gets its own axis.
    a_val = a_acc.twinx() if any(_series(h, "val/avg")[0] for h in histories) else None
    for i, (history, label) in enumerate(zip(histories, labels, strict=True)):
        color = f"C{i}"
        for key, style, name in (
            ("entropy", "-", "all tokens"),
            ("entropy/informative", "-.", "informative rollouts (steps with the zero-signal skip)"),
            ("entropy/correct", "--", "correct rollouts"),
            ("entropy/incorrect", ":", "incorrect rollouts"),
        ):
            a_ent.plot(*_series(history, key, smooth=smooth), style, color=color, label=f"{label}: {name}")
        a_acc.plot(*_series(history, "reward", smooth=smooth), "-", color=color, label=f"{label}: train reward")
        for j, key in enumerate(_validation_keys(history)):
            name = key.removeprefix("eval_")
            style = "o" + ("--", ":", "-.")[j % 3]
            _validation(a_acc, *_series(history, key), style, color, f"{label}: val {name}", ema_factor)
        if a_val is not None:
            _validation(a_val, *_series(history, "val/avg"), "D-.", color, f"{label}: val accuracy (avg)", ema_factor)
        for key, style, name in (
            ("all_solved", "o-", "all-solved (p=1)"),
            ("none_solved", "s--", "none-solved (p=0)"),
        ):
            xs, ys, how = _epoch_shares(history, key)
            a_solved.plot(
                xs, ys, style, color=color, ms=3 if how == "per step" else 6, label=f"{label}: {name}, {how}"
            )
        for unit, style in (("rollout_step", "-"), ("optimizer_step", ":")):  # the paper's Fig. 2 d,h: rollout_step
            series = _series(history, f"likelihood_displacement/{unit}", smooth=smooth)
            if series[0]:
                a_disp.plot(*series, style, color=color, label=f"{label}: per {unit.replace('_', ' ')}")
        a_cov.plot(*_cov_curve(history), "o-", color=color, label=label)
        a_adv.plot(
            *_series(history, "advantages/correct_abs_mean", smooth=smooth),
            "-",
            color=color,
            label=f"{label}: correct",
        )
        a_adv.plot(
            *_series(history, "advantages/incorrect_abs_mean", smooth=smooth),
            "--",
            color=color,
            label=f"{label}: incorrect",
        )
    xlabel = "training step (rollout steps)" if all(map(rollout_axis, histories)) else "optimizer step (TRL)"
    a_ent.set(xlabel=xlabel, ylabel="mean token entropy (nats)")
    a_acc.set(xlabel=xlabel, ylabel="mean reward / accuracy")
    if a_val is not None:
        a_val.set_ylabel("validation accuracy (%), avg over benchmarks")
    a_solved.set(xlabel="epoch", ylabel="share of prompts (groups)", ylim=(-0.02, 1.02))
    a_disp.set(xlabel=xlabel, ylabel=r"E[log $\pi_{new}$(y) - log $\pi_{old}$(y)]")
    a_cov.set(xlabel="group accuracy p = k/G", ylabel="Cov(length-normalised log-prob, advantage)", xlim=(0, 1))
    a_adv.set(xlabel=xlabel, ylabel="mean |advantage|")
    hints = {
        a_disp: "not logged: set likelihood_displacement_rollout_steps",
        a_cov: "not logged: needs cov_window_rollout_steps > 0 and mixed groups",
        a_solved: "not logged: needs log_diagnostics",
        a_adv: "not logged: needs log_diagnostics",
    }
    for ax in axes:
        if ax.lines and any(len(line.get_xdata()) for line in ax.lines):
            handles, names = ax.get_legend_handles_labels()
            if ax is a_acc and a_val is not None:
                more = a_val.get_legend_handles_labels()
                handles, names = handles + more[0], names + more[1]
            ax.legend(handles, names, fontsize=7, loc="best")
        else:
            ax.text(
                0.5, 0.5, hints.get(ax, "not logged"), ha="center", va="center", transform=ax.transAxes, color="gray"
            )
    for ax in (a_disp, a_cov):
        ax.axhline(0.0, color="gray", lw=0.8)  # the sign is what these panels are read for
    return fig


def plot_runs(
    runs: Sequence[str | Path] | str | Path,
    output: str | Path | None = None,
    labels: Sequence[str] | None = None,
    smooth: int = 1,
    ema_factor: float = PAPER_EMA,
) -> Path:
    """Plot one or several finished runs into a PNG; returns its path (default ``<first run>/diagnostics.png``)."""
    runs = [runs] if isinstance(runs, (str, Path)) else list(runs)
    if smooth < 1:
        raise ValueError(f"smooth={smooth} must be >= 1 (1 = no smoothing)")
    labels = list(labels) if labels is not None else [Path(r).resolve().name for r in runs]
    histories = [load_log_history(r) for r in runs]
    fig = make_figure(histories, labels, smooth=smooth, ema_factor=ema_factor)
    first = Path(runs[0])
    output = Path(output) if output is not None else (first if first.is_dir() else first.parent) / "diagnostics.png"
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    return output


def plot_quickstart(run_dir: str | Path) -> Path:
    """``quickstart.png`` in a run directory of ``asym_trl.apps.quickstart``: training reward and entropy, held-out
    accuracy, before vs after."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend (e.g. Jupyter's) alone

    run_dir = Path(run_dir)
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    summary = json.loads((run_dir / "summary.json").read_text())
    train = [h for h in history if "reward" in h]
    curve = [h for h in history if "heldout/sampled_accuracy" in h]
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    ax = axes[0]
    ax.plot([h["step"] for h in train], [h["reward"] for h in train], label="train reward (T=1)")
    steps = [0] + [h["step"] for h in curve]
    for key, label in [("sampled_accuracy", "held-out, sampled"), ("greedy_accuracy", "held-out, greedy")]:
        ax.plot(steps, [summary["before"][key]] + [h[f"heldout/{key}"] for h in curve], "o-", label=label)
    ax.set(xlabel="RL step", ylabel="accuracy", ylim=(0, 1), title="accuracy")
    ax.legend(fontsize=8)
    ax = axes[1]
    for key, style, label in [
        ("entropy", "-", "train rollouts"),  # steps the zero-signal skip ran in full
        ("entropy/informative", ":", "train rollouts with a non-zero advantage"),  # steps it skipped rows
    ]:
        logged = [h for h in train if key in h]
        if logged:
            ax.plot([h["step"] for h in logged], [h[key] for h in logged], style, label=label)
    for key, label in [("entropy_correct", "held-out, correct"), ("entropy_incorrect", "held-out, incorrect")]:
        ax.plot(steps, [summary["before"][key]] + [h[f"heldout/{key}"] for h in curve], "o-", label=label)
    ax.set(xlabel="RL step", ylabel="mean token entropy (nats)", title="entropy")
    ax.legend(fontsize=8)
    ax = axes[2]
    keys = ["greedy_accuracy", "sampled_accuracy", "all_solved", "none_solved"]
    x = range(len(keys))
    ax.bar([i - 0.2 for i in x], [summary["before"][k] for k in keys], width=0.4, label="after SFT")
    ax.bar([i + 0.2 for i in x], [summary["after"][k] for k in keys], width=0.4, label="after AsymGRPO")
    ax.set_xticks(list(x), ["greedy acc", "sampled acc", "all-solved", "none-solved"], fontsize=8)
    ax.set(ylim=(0, 1), title=f"held-out ({summary['settings']['num_test']} problems)")
    ax.legend(fontsize=8)
    path = run_dir / "quickstart.png"
    fig.savefig(path, dpi=100)
    return path


@one_line_errors("plot")
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="asym-trl plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run output directories (or trainer_state.json files)")
    parser.add_argument("--output", "-o", help="PNG path (default: <first run>/diagnostics.png)")
    parser.add_argument("--labels", nargs="+", help="one legend label per run (default: directory names)")
    parser.add_argument("--smooth", type=int, default=1, help="moving-average window over logged steps")
    parser.add_argument(
        "--ema", type=float, default=PAPER_EMA, help="EMA factor of the validation curves (App. C: 0.7; 0 = raw)"
    )
    opts = parser.parse_args(argv)
    if opts.labels is not None and len(opts.labels) != len(opts.runs):
        parser.error(f"--labels needs one label per run ({len(opts.runs)}), got {len(opts.labels)}")
    try:
        print(plot_runs(opts.runs, opts.output, opts.labels, opts.smooth, opts.ema))
    except (FileNotFoundError, ValueError) as e:  # a run that is not there, or has no log history
        raise UsageError(str(e)) from e
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
