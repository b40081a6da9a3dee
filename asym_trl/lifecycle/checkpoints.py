"""Checkpoints that cannot be half-written, and the crash checkpoint.

HF Trainer (5.x) writes ``checkpoint-N`` in place, file by file.  A process killed during that write (SIGKILL after
a grace period, a lost node) leaves a directory that ``get_last_checkpoint`` would pick and the resume would then fail
on.  So a checkpoint is *published* once every process has finished writing it: :class:`CheckpointPublisher` (the
last ``on_save`` callback) flushes its files to disk and then writes ``checkpoint_complete.json``, the size of every
file, atomically (temporary file + rename).  :func:`newest_complete_checkpoint` resumes from the newest checkpoint
whose marker is there and whose files have the recorded sizes, and says which newer ones it skipped and why.

:class:`CrashCheckpoint` keeps the RNG state of the end of the last optimizer step; when a step raises, :meth:`save`
checkpoints that step (model, optimizer and scheduler were not touched by the failing step: gradients are only
accumulated until the optimizer steps) with that RNG, so a resume is the straight run's continuation.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..trl_compat import save_checkpoint

__all__ = [
    "COMPLETE_FILE",
    "CheckpointPublisher",
    "ComponentStates",
    "CrashCheckpoint",
    "checkpoint_dir",
    "incomplete_reason",
    "newest_complete_checkpoint",
    "publish",
]

COMPLETE_FILE = "checkpoint_complete.json"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(checkpoint: str | os.PathLike) -> None:
    """Flush every file of ``checkpoint`` to disk, then write its completion marker (the file sizes) atomically."""
    checkpoint = Path(checkpoint)
    files = sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != COMPLETE_FILE)
    for path in files:
        _fsync(path)
    manifest = {str(p.relative_to(checkpoint)): p.stat().st_size for p in files}
    tmp = checkpoint / f".{COMPLETE_FILE}.tmp"
    tmp.write_text(json.dumps({"files": manifest}, indent=1, sort_keys=True))
    _fsync(tmp)
    os.replace(tmp, checkpoint / COMPLETE_FILE)
    _fsync(checkpoint)


def incomplete_reason(checkpoint: str | os.PathLike) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (its write did not finish), or None when it is complete."""
    checkpoint = Path(checkpoint)
    try:
        manifest = json.loads((checkpoint / COMPLETE_FILE).read_text())["files"]
    except FileNotFoundError:
        return f"no {COMPLETE_FILE}: its write did not finish"
    except (ValueError, KeyError, TypeError):
        return f"{COMPLETE_FILE} is unreadable"
    for name, size in manifest.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written (truncated or changed)"
    return None


def newest_complete_checkpoint(output_dir: str | os.PathLike) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest complete ``checkpoint-N`` of ``output_dir`` (None: none) and the newer ones skipped, with why."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None, []
    steps = sorted(
        (int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))
    )
    skipped = []
    for _, path in reversed(steps):
        reason = incomplete_reason(path)
        if reason is None:
            return str(path), skipped
        skipped.append((str(path), reason))
    return None, skipped


class CheckpointPublisher(TrainerCallback):
    """Publishes each checkpoint once every process has written its part (add it after every ``on_save`` writer)."""

    def __init__(self, accelerator):
        self.accelerator = accelerator

    def on_save(self, args, state, control, **kwargs):
        self.accelerator.wait_for_everyone()  # every rank's files (RNG states, shards) are written
        checkpoint = checkpoint_dir(args.output_dir, state.global_step)
        if state.is_world_process_zero and checkpoint.is_dir():
            publish(checkpoint)
        return control


class ComponentStates(TrainerCallback):
    """The state of the trainer's parts that spans optimizer steps (the diagnostics' epoch counts, the adaptive
    beta controller), one JSON file each in every checkpoint, read back on resume so a resumed run continues as the
    straight run. ``components`` maps a file name to an object with ``state_dict()`` / ``load_state_dict(dict)``;
    the state is global (identical on every process), so the main process writes it. Add it before the
    :class:`CheckpointPublisher`, which marks the checkpoint complete."""

    def __init__(self, components: dict):
        self.components = components

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = checkpoint_dir(args.output_dir, state.global_step)
            for name, component in self.components.items():
                (checkpoint / name).write_text(json.dumps(component.state_dict()))

    def resume_from(self, checkpoint, output_dir: str | os.PathLike) -> None:
        """Load each component's file from ``checkpoint`` (a path, or True: the last one in ``output_dir``), if any."""
        if checkpoint is True:
            checkpoint = get_last_checkpoint(output_dir)
        if not isinstance(checkpoint, (str, os.PathLike)):
            return
        for name, component in self.components.items():
            path = Path(checkpoint) / name
            if path.is_file():
                component.load_state_dict(json.loads(path.read_text()))


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class CrashCheckpoint(TrainerCallback):
    """Checkpoint of the last completed optimizer step when a step raises (one process; see the module docstring)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.rng = None  # the RNG state at the end of the last optimizer step

    def on_step_end(self, args, state, control, **kwargs):
        self.rng = _rng_state()
        return control

    def save(self) -> str | None:
        """Write ``checkpoint-<global_step>`` unless it exists complete; None when no step has completed yet."""
        trainer = self.trainer
        path = checkpoint_dir(trainer.args.output_dir, trainer.state.global_step)
        if incomplete_reason(path) is None:
            return str(path)
        if self.rng is None:
            return None  # no optimizer step completed in this session: the checkpoint resumed from is the last one
        _set_rng_state(self.rng)  # the RNG as the end of the step left it: the resume continues the straight run
        save_checkpoint(trainer)
        trainer.control = trainer.callback_handler.on_save(trainer.args, trainer.state, trainer.control)
        return str(path)
