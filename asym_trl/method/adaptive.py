"""Adaptive beta: (beta_pos, beta_neg) of Eq. 10 moved during training towards a target training entropy.

A fixed beta is the paper's own stated limitation: the right asymmetry early (sharpen) is not the right one late (keep
informative entropy from collapsing). By Eq. 9 and §3.1 a larger ``beta_pos`` slows the entropy decrease and a larger
``beta_neg`` speeds it up (measured in docs/testbed.md: claims S1, S4). After each optimizer step the controller reads
the step's mean token entropy ``H`` (over every process) and moves both exponents by the same bounded amount:

    target  H* = adaptive_beta_target * H_1        (H_1: the first step's entropy; or adaptive_beta_target_entropy)
    delta      = clip(log(H / H*), -adaptive_beta_step, +adaptive_beta_step)
    beta_pos  <- clip(beta_pos - delta, lo, hi)     beta_neg <- clip(beta_neg + delta, lo, hi)

Entropy above target: less weight on rare successes, more on confident failures (sharpen); below: the reverse
(explore). The config's betas are the starting point. The advantages of a generation batch use the betas in effect
when it was scored. The state (betas, ``H_1``, updates) is saved in every checkpoint (``adaptive_beta.json``), so a
resumed run continues exactly; ``adaptive/*`` metrics log it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

STATE_FILE = "adaptive_beta.json"  # in every checkpoint (lifecycle.checkpoints.ComponentStates)


@dataclass
class AdaptiveBeta:
    """The controller (module doc): pure state and update law, no torch, no trainer."""

    beta_pos: float
    beta_neg: float
    target: float = 0.5  # fraction of the first step's entropy
    target_entropy: float | None = None  # an absolute target (nats per token) instead
    step: float = 0.05  # largest move of either beta per optimizer step
    low: float = 0.0
    high: float = 1.5
    reference: float | None = None  # H_1, set by the first update
    updates: int = 0

    @classmethod
    def from_config(cls, args) -> AdaptiveBeta:
        low, high = args.adaptive_beta_range
        return cls(
            beta_pos=args.beta_pos,
            beta_neg=args.beta_neg,
            target=args.adaptive_beta_target,
            target_entropy=args.adaptive_beta_target_entropy,
            step=args.adaptive_beta_step,
            low=low,
            high=high,
        )

    def target_value(self) -> float | None:
        """``H*`` in nats per token (None before the first update of a relative target)."""
        if self.target_entropy is not None:
            return self.target_entropy
        return None if self.reference is None else self.target * self.reference

    def update(self, entropy: float) -> float:
        """Move the betas after a step whose mean token entropy was ``entropy``; returns the move ``delta``."""
        if not math.isfinite(entropy) or entropy <= 0:
            return 0.0  # no tokens this step (or a degenerate policy): hold
        if self.reference is None:
            self.reference = entropy
        self.updates += 1
        delta = max(-self.step, min(self.step, math.log(entropy / self.target_value())))
        self.beta_pos = min(self.high, max(self.low, self.beta_pos - delta))
        self.beta_neg = min(self.high, max(self.low, self.beta_neg + delta))
        return delta

    def betas(self) -> dict[str, float]:
        return {"beta_pos": self.beta_pos, "beta_neg": self.beta_neg}

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)


class AdaptiveBetaCallback(TrainerCallback):
    """Feeds :class:`AdaptiveBeta` the global mean token entropy of each optimizer step.

    Handed what it uses: the controller, a ``reduce(tensor) -> tensor`` summing over processes (run on every process,
    in the same order), and a ``log(name, value)`` metrics sink. Its ``state_dict`` is the controller's: the trainer
    keeps it in checkpoints with :class:`asym_trl.lifecycle.checkpoints.ComponentStates`."""

    def __init__(
        self,
        controller: AdaptiveBeta,
        reduce: Callable,
        log: Callable[[str, float], None],
        publish: Callable[[dict], None] | None = None,
    ):
        self.controller, self.reduce, self.log, self.publish = controller, reduce, log, publish
        self.sums = None  # (entropy sum, token count) of the step so far, on the device (no host sync per batch)

    def state_dict(self) -> dict:
        return self.controller.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.controller.load_state_dict(state)

    def observe(self, entropies: torch.Tensor, mask: torch.Tensor) -> None:
        """One loss micro-batch's ``(B, T)`` token entropies under its completion mask (training only)."""
        step = torch.stack([(entropies.detach() * mask).sum(), mask.sum()]).double()
        self.sums = step if self.sums is None else self.sums + step

    def on_step_end(self, args, state, control, **kwargs):
        sums = self.sums if self.sums is not None else torch.zeros(2, dtype=torch.float64)
        total, count = self.reduce(sums).tolist()  # every process, every step: a collective
        self.sums = None
        delta = self.controller.update(total / count if count else float("nan"))
        if self.publish is not None:  # the asynchronous trainer's scorer runs in another process
            self.publish(self.controller.betas())
        target = self.controller.target_value()
        for name, value in (("entropy", total / max(count, 1)), ("delta", delta), ("target_entropy", target)):
            if value is not None:
                self.log(f"adaptive/{name}", value)
        for name, value in self.controller.betas().items():
            self.log(f"adaptive/{name}", value)


class BetasFile:
    """The controller's betas for a scorer in another process (the asynchronous trainer's rollout worker, a spawned
    child): written atomically after every update, read back when they changed (one ``stat`` per read)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._seen: tuple[tuple, dict] | None = None

    def write(self, betas: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".partial")
        tmp.write_text(json.dumps(betas))
        os.replace(tmp, self.path)

    def read(self) -> dict:
        """The betas last written; ``{}`` before the first write (the config's betas: the controller's start)."""
        if not self.path.exists():
            return {}
        stat = self.path.stat()
        stamp = (stat.st_ino, stat.st_mtime_ns)  # every write is a new file (os.replace)
        if self._seen is None or self._seen[0] != stamp:
            self._seen = (stamp, json.loads(self.path.read_text()))
        return self._seen[1]
