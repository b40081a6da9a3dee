"""The quickstart's training callbacks: one progress bar per phase, and the held-out curve during RL.

Kept apart from ``asym_trl.apps.quickstart`` because they subclass transformers' callbacks: the command module
imports transformers, TRL and torch only when it runs, so that ``asym-trl quickstart --help`` answers at once.
"""

from __future__ import annotations

from collections.abc import Callable

from tqdm.auto import tqdm
from transformers import TrainerCallback

from ..diagnostics.validation import ValidationCallback

__all__ = ["HeldOutCallback", "PhaseProgress"]


class PhaseProgress(TrainerCallback):
    """One progress bar over a training phase's optimizer steps (the trainers run with ``disable_tqdm``)."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=state.max_steps, desc=self.desc, unit="step", leave=True, dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()


class HeldOutCallback(ValidationCallback):
    """The held-out curve: every ``eval_steps`` steps, ``measure(generate, dataset, step)`` of the live policy (the
    quickstart's ``evaluate_heldout``) as a ``heldout/*`` entry of the log history (no checkpoint selection).  Its
    sampling seeds the training RNG with the step (``isolate_rng=False``), as the quickstart always has, so that its
    numbers stay those of earlier runs."""

    def __init__(self, trainer, dataset, measure: Callable[..., dict[str, float]], eval_steps: int):
        super().__init__(
            trainer, {"heldout": dataset}, eval_steps=eval_steps, select_on="heldout", batch_size=len(dataset)
        )
        self.measure = measure

    def evaluate(self) -> dict[str, float]:
        step = self.trainer.state.global_step
        with self.transformers_generator(token_entropy=True, isolate_rng=False) as generate:
            metrics = self.measure(generate, self.benchmarks["heldout"], step)
        return {f"heldout/{k}": v for k, v in metrics.items()}

    def record(self, args, state, record: dict) -> None:
        state.log_history.append(record)
        tqdm.write(  # above the phase's progress bar
            f"  RL step {state.global_step:4d}: held-out accuracy sampled {record['heldout/sampled_accuracy']:.3f}, "
            f"greedy {record['heldout/greedy_accuracy']:.3f}; entropy {record['heldout/entropy']:.3f}"
        )
