"""Graceful stop: a stop signal ends training at the next step where a resume is exact, with a full checkpoint.

How a run stops (``docs/stopping.md``):

1. :class:`StopSignals` (installed by ``AsymGRPOTrainer.train`` for the duration of training) turns the first
   ``SIGTERM`` / ``SIGINT`` / ``SIGUSR1`` (``stop_signals``) into a flag and nothing else.  A second signal of the
   same kind restores the default action and re-sends itself: the process ends at once.
2. :class:`GracefulStop`, a ``TrainerCallback``, reads the flag at the end of every optimizer step after which a
   resume is exact -- the next micro-step would start a new generation batch (TRL regenerates after a resume; with
   ``steps_per_generation x num_iterations > gradient_accumulation_steps`` that is the end of the generation batch) --
   agreed over all processes by a max all-reduce that every rank calls at the same steps: one rank's signal stops
   every rank at the same step, and none writes alone.  It then sets ``TrainerControl.should_save`` and
   ``should_training_stop`` (HF Trainer's public way): the Trainer writes a full checkpoint (model, optimizer,
   scheduler, RNG, trainer state with the data position, the diagnostics' state) and training ends.
3. The in-training validation asks :meth:`GracefulStop.requested` between generation batches and gives up its pass.
4. ``stop_timeout`` seconds after the signal a watchdog thread ends the process (exit code :data:`STOP_EXIT_CODE`)
   if it has not stopped by then; the resume starts from the last complete checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

import torch
from transformers import TrainerCallback

__all__ = ["STOP_EXIT_CODE", "GracefulStop", "StopSignals", "any_rank", "parse_signals"]

STOP_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): stopped on request, resume with the same command


def parse_signals(spec: str) -> list[signal.Signals]:
    """``"SIGTERM,SIGUSR1"`` (or ``"TERM,USR1"``) -> the signals; ``""`` -> none.  ValueError names an unknown one."""
    signals = []
    for name in (part.strip().upper() for part in spec.split(",") if part.strip()):
        name = name if name.startswith("SIG") else f"SIG{name}"
        if name in ("SIGKILL", "SIGSTOP") or not hasattr(signal.Signals, name):
            raise ValueError(f"stop_signals: {name} is not a signal that can be caught (e.g. SIGTERM,SIGINT,SIGUSR1)")
        signals.append(signal.Signals[name])
    return signals


class StopSignals:
    """Signal handlers that only record the first stop signal (see the module docstring); a context manager."""

    def __init__(self, signals: list[signal.Signals], timeout: float = 0.0):
        self.signals, self.timeout = signals, timeout
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}
        self._wake, self._done = threading.Event(), threading.Event()

    def __enter__(self) -> StopSignals:
        self.received = None
        self._wake, self._done = threading.Event(), threading.Event()  # this session's watchdog
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        if self.signals and self.timeout > 0:
            watchdog = threading.Thread(target=self._watchdog, args=(self._wake, self._done), daemon=True)
            watchdog.start()
        return self

    def __exit__(self, *exc) -> None:
        self.finish()
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def finish(self) -> None:
        """The stop is complete (or training ended): the watchdog stands down."""
        self._done.set()
        self._wake.set()

    def _handle(self, signum, frame) -> None:
        sig = signal.Signals(signum)
        if self.received == sig:  # the second of its kind: the default action, now
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            return
        if self.received is None:
            self.received = sig
            message = f"asym-trl: {sig.name}: stopping at the next exact checkpoint ({sig.name} again: exit at once)\n"
            os.write(2, message.encode())  # not print(): a handler may interrupt a print
            self._wake.set()

    def _watchdog(self, wake: threading.Event, done: threading.Event) -> None:
        wake.wait()
        if not done.wait(self.timeout):
            os.write(2, f"asym-trl: no checkpoint within stop_timeout={self.timeout:g}s of {self.received.name}: "
                        f"exiting without one (exit code {STOP_EXIT_CODE}); a resume starts from the last complete "
                        "checkpoint\n".encode())  # fmt: skip
            os._exit(STOP_EXIT_CODE)


def any_rank(flag: bool, device) -> bool:
    """Whether ``flag`` is set on any process (a max all-reduce; every rank must call it at the same point)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


class GracefulStop(TrainerCallback):
    """Stop with a checkpoint at the first exact resume point after a stop signal, on every rank together.

    Args:
        signals: the handlers whose flag is read.
        at_exact_point: whether a resume after the optimizer step just taken is exact (the next micro-step starts a
            new generation batch); the same answer on every rank.
        device: the accelerator's device, where the flag is all-reduced (gloo: CPU, NCCL: the GPU).
    """

    def __init__(self, signals: StopSignals, at_exact_point: Callable[[], bool], device):
        self.signals, self.at_exact_point, self.device = signals, at_exact_point, device
        self.stopping = False  # agreed by every rank; never reset
        self.stop_step: int | None = None

    def requested(self) -> bool:
        """Whether any rank got a stop signal (collective until the first yes, then sticky on every rank)."""
        if not self.stopping:
            self.stopping = any_rank(self.signals.received is not None, self.device)
        return self.stopping

    @property
    def signal_name(self) -> str:
        return self.signals.received.name if self.signals.received is not None else "a stop signal on another process"

    def on_step_end(self, args, state, control, **kwargs):
        if self.at_exact_point() and self.requested():
            control.should_save = True
            control.should_training_stop = True
            self.stop_step = state.global_step
        return control

    def on_train_begin(self, args, state, control, **kwargs):
        self.stopping, self.stop_step = False, None
        return control

    def done(self) -> None:
        """Training has ended (stopped, finished or failed): the watchdog stands down."""
        self.signals.finish()
