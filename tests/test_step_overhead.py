"""What AsymGRPOTrainer adds to a training step, kept small (issue 28): its host reads per step (each one a device
sync on a GPU) are few and do not grow with the batch, TRL's own are untouched, and trainers built one after another
in a process neither leak nor do more work. The parts and reads are measured by benchmarks/step_parts.py (also used by
bench_step.py and gpu_check.py); the wall-time ratio to TRL is a benchmark, not a test."""

from __future__ import annotations

import gc
import signal
import sys
import threading
import warnings
import weakref
from pathlib import Path

import pytest
from trl import GRPOConfig, GRPOTrainer

from asym_trl import AsymGRPOConfig, AsymGRPOTrainer
from asym_trl.apps.tiny import cpu_run_kwargs, toy_sum_dataset, toy_sum_reward

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from step_parts import HostReadsPerStep, PythonCallsPerStep, StepParts  # noqa: E402


def make(trainer_cls, config_cls, model, out, batch=16, steps=4, **extra):
    args = config_cls(
        **cpu_run_kwargs(),
        output_dir=str(out),
        per_device_train_batch_size=batch,
        num_generations=8,
        max_completion_length=8,
        max_steps=steps,
        **extra,
    )
    return trainer_cls(model, reward_funcs=toy_sum_reward, args=args, train_dataset=toy_sum_dataset(256))


def reads_per_step(trainer) -> tuple[list[int], list[int]]:
    reads = HostReadsPerStep(trainer)
    trainer.train()
    return [h.get("asym_trl", 0) for h in reads.history], [h.get("trl", 0) for h in reads.history]


@pytest.mark.parametrize("diagnostics", [True, False])
def test_few_host_reads_per_step_and_none_that_grow_with_the_batch(diagnostics, tiny_model_path, tmp_path):
    """Measured 2026-12-04: 4-5 reads a step with the diagnostics (from 43-46 before the deferred metrics), 5-6
    without (the zero-signal skip's row counts); TRL's own GRPOTrainer makes ~62."""
    ours, trl_own = {}, {}
    for batch in (16, 32):
        trainer = make(AsymGRPOTrainer, AsymGRPOConfig, tiny_model_path, tmp_path / f"a{batch}", batch,
                       log_diagnostics=diagnostics)  # fmt: skip
        ours[batch], trl_own[batch] = reads_per_step(trainer)
    budget = 6 if diagnostics else 7
    assert max(ours[16]) <= budget and max(ours[32]) <= budget, ours
    assert max(ours[32]) <= max(ours[16]) + 1, f"asym_trl's host reads grow with the batch: {ours}"
    plain = make(GRPOTrainer, GRPOConfig, tiny_model_path, tmp_path / "trl", 16)
    assert reads_per_step(plain)[1] == trl_own[16]  # TRL's own work is unchanged by the subclass


def test_the_step_parts_add_up(tiny_model_path, tmp_path):
    trainer = make(AsymGRPOTrainer, AsymGRPOConfig, tiny_model_path, tmp_path / "parts", steps=3)
    parts = StepParts(trainer)
    trainer.train()
    assert len(parts.history) == 3
    for step in parts.history:
        named = sum(v for k, v in step.items() if k not in ("step", "diagnostics"))
        assert named == pytest.approx(step["step"], rel=1e-6) and step["generate"] > 0 and step["backward"] > 0
        assert 0 < step["diagnostics"] < step["step"] and step["rescore"] > 0


def _process_state() -> dict:
    return {
        "signals": {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)},
        "threads": threading.active_count(),
        "warning_filters": len(warnings.filters),
        "showwarning": warnings.showwarning,
    }


def test_trainers_built_one_after_another_neither_leak_nor_do_more_work(tiny_model_path, tmp_path):
    """Three AsymGRPOTrainers in a row (the GPU run of 2026-12-04 saw AsymGRPO's per-trainer medians grow 4.37, 5.28,
    6.67 s over an ABBA sequence): each is collected once dropped, leaves the process's signal handlers, threads and
    warning filters as it found them, and each of its steps makes exactly the Python calls the first trainer's made
    (a hook, callback or handler left behind would add calls to every later step). Wall time is the benchmark's
    (bench_step.py --sequence 3): on shared cores a timed test would measure the neighbours."""
    calls, before = [], None
    for i in range(3):
        trainer = make(AsymGRPOTrainer, AsymGRPOConfig, tiny_model_path, tmp_path / f"t{i}", steps=4)
        counter = PythonCallsPerStep(trainer)
        trainer.train()
        calls.append(counter.history[1:])  # the first step of a process runs one-time code (lazy imports, caches)
        alive = weakref.ref(trainer)
        del trainer, counter
        gc.collect()
        assert alive() is None, "a trainer outlives its run (something still holds it)"
        state = _process_state()
        if before is not None:
            assert state == before, "a trainer left process-wide state behind"
        before = state
    assert calls[0][0]["asym_trl"] > 0 and len(calls[0]) == 3
    assert calls[1] == calls[0] and calls[2] == calls[0], "later trainers do more work per step"
