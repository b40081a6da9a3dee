"""A GRPO training step by part, and its host reads, for TRL's GRPOTrainer and AsymGRPOTrainer alike.

Used by benchmarks/bench_step.py (CPU), benchmarks/gpu_check.py (a GPU) and tests/test_step_overhead.py. Two
instruments, each attached to one trainer before ``train()``:

- :class:`StepParts` times each optimizer step by part (seconds per step, summed over its micro-steps); on CUDA it
  synchronises the device at every boundary, so run it apart from the wall-time comparison:

  ======================  ====================================================================================
  ``generate``            TRL's ``_generate`` (the policy samples the completions)
  ``rewards``             TRL's ``_calculate_rewards`` (reward functions, gathered from all processes)
  ``scoring``             the rest of ``_generate_and_score_completions`` (tokenisation, TRL's advantages, ...)
  ``rescore``             AsymGRPOTrainer's ``rescore`` (the registry's advantages, the diagnostics of the batch)
  ``loss_forward``        ``compute_loss`` (the policy forward and the loss; the loss-side diagnostics)
  ``backward``            the rest of ``training_step``: the backward pass
  ``optimizer``           ``optimizer.step``
  ``other``               the rest of the step (gradient clipping, callbacks, logging)
  ``step``                the whole optimizer step (``on_step_begin`` to ``on_step_end``)
  ======================  ====================================================================================

  ``diagnostics`` (part of ``rescore``, ``loss_forward`` and ``other``) is GroupDiagnostics' own time.

- :class:`HostReads` counts the calls that read a tensor's value on the host (``item``, ``tolist``, ``bool``,
  ``float``, ``int``, ``cpu``, ``numpy``, ``nonzero``, boolean-mask indexing, ``to("cpu")`` of a device tensor): each
  one waits for the device on CUDA. On CPU it counts the same calls (``.cpu()`` included, a no-op there).
  They are attributed to the innermost library on the Python stack (``asym_trl``, ``trl``, ``transformers``, ...),
  so asym_trl's own per-step reads can be counted on any device (``torch.cuda.set_sync_debug_mode`` needs CUDA).

The private TRL methods wrapped here are the ones ``asym_trl.trl_compat`` pins (tests/test_trl_contract.py).
"""

from __future__ import annotations

import collections
import functools
import os
import sys
import time

import torch
from torch.overrides import TorchFunctionMode
from transformers import TrainerCallback

PARTS = ("generate", "rewards", "scoring", "rescore", "loss_forward", "backward", "optimizer", "other", "step")
_WRAPPED = {  # method -> the part whose time it is (nested calls are subtracted from their callers)
    "_generate": "generate",
    "_calculate_rewards": "rewards",
    "_generate_and_score_completions": "scoring",
    "rescore": "rescore",
    "compute_loss": "loss_forward",
    "training_step": "backward",
}


class StepParts(TrainerCallback):
    """Per-optimizer-step seconds of each part of :data:`PARTS` (module doc), in ``history`` (one dict per step)."""

    def __init__(self, trainer, device: str | torch.device = "cpu"):
        self.trainer, self.cuda = trainer, torch.device(device).type == "cuda"
        self.history: list[dict[str, float]] = []
        self._current = collections.defaultdict(float)
        self._stack: list[list[float]] = []  # the running parts: [child seconds] of each
        self._step_start = None
        for method, part in _WRAPPED.items():
            if hasattr(trainer, method):
                setattr(trainer, method, self._timed(getattr(trainer, method), part))
        diagnostics = getattr(trainer, "diagnostics", None)
        if diagnostics is not None:
            for method in ("on_generation", "on_loss_micro_batch", "on_step_end"):
                setattr(diagnostics, method, self._timed(getattr(diagnostics, method), "diagnostics", nested=False))
        trainer.add_callback(self)

    def _clock(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _timed(self, fn, part: str, nested: bool = True):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            start = self._clock()
            if nested:
                self._stack.append([0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                spent = self._clock() - start
                if nested:
                    children = self._stack.pop()[0]
                    self._current[part] += spent - children  # its own time, without the parts it called
                    if self._stack:
                        self._stack[-1][0] += spent
                else:
                    self._current[part] += spent  # a sub-part: counted inside its caller too

        return wrapper

    def on_train_begin(self, args, state, control, **kwargs):
        optimizer = self.trainer.optimizer
        optimizer.step = self._timed(optimizer.step, "optimizer")

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = self._clock()

    def on_step_end(self, args, state, control, **kwargs):
        step = self._clock() - self._step_start
        parts = {part: self._current.get(part, 0.0) for part in (*PARTS[:-2], "diagnostics")}
        parts["other"] = step - sum(v for k, v in parts.items() if k != "diagnostics")
        parts["step"] = step
        self.history.append(parts)
        self._current.clear()


def median_parts(history: list[dict[str, float]], skip: int = 1) -> dict[str, float]:
    """The median of each part over the steps after the first ``skip`` (warm-up)."""
    import statistics

    rows = history[skip:] or history
    return {part: statistics.median(row[part] for row in rows) for part in rows[0]}


# -------------------------------------------------------------------------------------------------- host reads
_READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy", "nonzero"}
_LIBRARIES = ("asym_trl", "trl", "transformers", "accelerate", "peft", "datasets")


def _library_of(filename: str) -> str | None:
    parts = filename.split(os.sep)
    for name in _LIBRARIES:
        if name in parts:
            return name
    return None


class HostReads(TorchFunctionMode):
    """Counts host reads of tensor values by library while active (module doc); ``counts[library]``."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()
        self.sites: collections.Counter = collections.Counter()  # (library, file:line) of each read

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        read = name in _READS or (
            name == "__getitem__"
            and len(args) > 1
            and isinstance(args[1], torch.Tensor)
            and args[1].dtype == torch.bool
        )
        if name == "to" and isinstance(args[0], torch.Tensor) and args[0].device.type != "cpu":
            read = any(torch.device(a).type == "cpu" for a in args[1:] if isinstance(a, (str, torch.device)))
        if read:
            frame = sys._getframe(1)
            while frame is not None:
                library = _library_of(frame.f_code.co_filename)
                if library is not None:
                    self.counts[library] += 1
                    where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
                    self.sites[(library, where)] += 1
                    break
                frame = frame.f_back
        return func(*args, **(kwargs or {}))


class HostReadsPerStep(TrainerCallback):
    """:class:`HostReads` active from each ``on_step_begin`` to its ``on_step_end`` (generation, scoring, the loss,
    the optimizer and the step's callbacks); ``history``: one ``{library: reads}`` per optimizer step."""

    def __init__(self, trainer):
        self.history: list[dict[str, int]] = []
        self.sites: collections.Counter = collections.Counter()
        self._mode: HostReads | None = None
        trainer.add_callback(self)
        # after every other callback: their on_step_end reads count (the trainer's own callbacks were added first)

    def on_step_begin(self, args, state, control, **kwargs):
        self._mode = HostReads()
        self._mode.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        self._mode.__exit__(None, None, None)
        self.history.append(dict(self._mode.counts))
        self.sites.update(self._mode.sites)


class PythonCallsPerStep(TrainerCallback):
    """The Python function calls of each optimizer step, by library (``sys.setprofile``; this thread): a
    deterministic measure of the work a step does, which a leak (a hook, a callback or a handler left behind by an
    earlier trainer) makes grow. ``history``: one ``{library: calls}`` per step."""

    def __init__(self, trainer):
        self.history: list[dict[str, int]] = []
        self._counts: collections.Counter | None = None
        self._libraries: dict[str, str | None] = {}
        trainer.add_callback(self)

    def _profile(self, frame, event, arg):
        if event == "call":
            filename = frame.f_code.co_filename
            library = self._libraries.get(filename)
            if library is None and filename not in self._libraries:
                library = self._libraries[filename] = _library_of(filename) or (
                    "torch" if f"{os.sep}torch{os.sep}" in filename else None
                )
            if library is not None:
                self._counts[library] += 1

    def on_step_begin(self, args, state, control, **kwargs):
        self._counts = collections.Counter()
        sys.setprofile(self._profile)

    def on_step_end(self, args, state, control, **kwargs):
        sys.setprofile(None)
        self.history.append(dict(self._counts))


class CudaSyncsPerStep(TrainerCallback):
    """CUDA only: the synchronisations torch itself reports in each optimizer step
    (``torch.cuda.set_sync_debug_mode("warn")``), by the library whose code triggered them; ``history``."""

    def __init__(self, trainer):
        import warnings

        self._warnings = warnings
        self.history: list[dict[str, int]] = []
        self.sites: collections.Counter = collections.Counter()
        self._recorder = self._records = None
        trainer.add_callback(self)

    def on_step_begin(self, args, state, control, **kwargs):
        self._recorder = self._warnings.catch_warnings(record=True)
        self._records = self._recorder.__enter__()
        self._warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def on_step_end(self, args, state, control, **kwargs):
        torch.cuda.set_sync_debug_mode("default")
        self._recorder.__exit__(None, None, None)
        counts = collections.Counter()
        for record in self._records:
            if "synchroniz" in str(record.message):
                library = _library_of(record.filename) or "other"
                counts[library] += 1
                self.sites[(library, f"{os.path.basename(record.filename)}:{record.lineno}")] += 1
        self.history.append(dict(counts))
