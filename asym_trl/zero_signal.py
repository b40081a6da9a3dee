"""Exact zero-signal skip: rollouts whose gradient is exactly zero are left out of the loss forward/backward.

A rollout with advantage 0 adds ``0 x (ratio terms)`` to TRL's loss when there is no KL term, no entropy bonus,
no entropy advantage, no high-entropy token mask (its quantile spans the micro-batch) and no router loss: its
gradient is exactly zero.  :class:`ZeroSignalSkip` drops those rows from each loss micro-batch and rescales TRL's
loss to the normaliser of the full micro-batch (:func:`asym_trl.trl_compat.loss_normaliser`), so the update is the
one without the skip up to float summation order.  Every loss call still happens on every process (TRL's metric
reductions and DDP's gradient sync stay in lock-step): a micro-batch with no informative row runs one row with its
completion masked out, whose loss and gradient are exactly zero, and every process forwards as many rows as the
process that keeps the most (TRL gathers per-row metrics, which needs equal shapes).

Metrics computed from the loss forward then cover the informative rollouts only and are logged as
``<name>/informative`` (``docs/zero_signal.md``); the skip steps aside (all rows, usual names) while the
diagnostics need every rollout's tokens (the Cov(p) window, likelihood-displacement steps) and in evaluation.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from .trl_compat import MODEL_INPUT_KEYS, entropy_bonus_enabled, loss_normaliser, metrics

SUFFIX = "/informative"
# Metrics TRL's loss computes from its forward (averaged over micro-steps by TRL's log()).
TRL_FORWARD_METRICS = (
    "entropy",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
    "clip_ratio/low_min",
    "clip_ratio/high_max",
    "cispo_clip_ratio",
    "vespo/phi_seq_mean",
)
# Ours, from the same forward (GroupDiagnostics: one value per optimizer step).
OWN_FORWARD_METRICS = ("entropy/correct", "entropy/incorrect")
SKIPPED_FRAC = "zero_signal/skipped_frac"


def skip_blockers(trainer) -> list[str]:
    """Why a zero-advantage rollout still moves the weights under ``trainer``'s settings (empty: it does not)."""
    args = trainer.args
    reasons = {
        f"beta={trainer.beta} (KL term)": trainer.beta != 0.0,
        "entropy bonus (entropy_coef / adaptive entropy)": entropy_bonus_enabled(trainer) or args.entropy_coef != 0,
        "entropy advantage (entropy_adv_alpha > 0)": args.entropy_adv_alpha > 0,
        "top_entropy_quantile < 1 (micro-batch-wide token mask)": trainer.top_entropy_quantile < 1.0,
        "router auxiliary loss": bool(getattr(trainer, "aux_loss_enabled", False)),
        f"loss_type={trainer.loss_type!r} (normaliser not known)": loss_normaliser(trainer.loss_type) is None,
    }
    return [reason for reason, applies in reasons.items() if applies]


def select_rows(inputs: dict, index: torch.Tensor) -> dict:
    """The micro-batch restricted to the rows ``index``: per-row tensors and lists are indexed, the rest is kept."""
    n = len(inputs["advantages"])

    def pick(value):
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.size(0) == n:
            return value.index_select(0, index.to(value.device))
        if isinstance(value, (list, tuple)) and len(value) == n:
            return [value[i] for i in index.tolist()]
        return value

    return {key: pick(value) for key, value in inputs.items()}


def informative_rows(advantages: torch.Tensor) -> torch.Tensor:
    """Rows with a non-zero advantage (on any token, for per-token advantages)."""
    return advantages.reshape(len(advantages), -1).ne(0).any(dim=1)


def padded_rows(inputs: dict, keep: torch.Tensor, width: int) -> dict:
    """The kept rows, then skipped rows with their completion masked out (zero loss, zero gradient) up to ``width``."""
    order = torch.cat([keep.nonzero(), (~keep).nonzero()]).squeeze(1)
    batch = select_rows(inputs, order[:width])
    batch["completion_mask"][int(keep.sum()) :] = 0  # a fresh tensor (index_select)
    return batch


def loss_scale(kind: str, inputs: dict, keep: torch.Tensor, width: int) -> float:
    """Factor that turns TRL's loss of the ``width`` forwarded rows (the kept ones first, then masked-out padding)
    into their share of the full micro-batch's loss."""
    if kind == "global":
        return 1.0
    if kind == "rows":  # TRL divided by the forwarded row count
        return width / len(keep)
    mask = inputs["completion_mask"] if "tool_mask" not in inputs else inputs["completion_mask"] * inputs["tool_mask"]
    return mask[keep].sum().item() / max(mask.sum().item(), 1.0)


class ZeroSignalSkip:
    """Runs each training loss micro-batch on its informative rows only, when that leaves the update unchanged."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.blockers = skip_blockers(trainer) if trainer.args.skip_zero_signal else ["skip_zero_signal=False"]
        self.enabled = not self.blockers
        if trainer.args.skip_zero_signal and self.blockers:
            reasons = "; ".join(self.blockers)
            warnings.warn(f"skip_zero_signal is off: zero-advantage rollouts count here ({reasons})", stacklevel=3)
        self._decided = (None, False)  # (global_step, steps aside): one decision per optimizer step

    def steps_aside(self, inputs: dict) -> bool:
        """True while every rollout's tokens are needed: evaluation, multimodal inputs, and the diagnostics' Cov(p)
        window and likelihood-displacement steps (optimizer or rollout).  Fixed for an optimizer step, and the same
        on every process."""
        trainer = self.trainer
        if not trainer.model.training or any(inputs.get(key) is not None for key in MODEL_INPUT_KEYS):
            return True
        step = trainer.state.global_step
        if self._decided[0] != step:
            diagnostics = getattr(trainer, "diagnostics", None)
            self._decided = (step, diagnostics is not None and diagnostics.needs_every_rollout(step))
        return self._decided[1]

    def loss(self, inputs: dict, loss_fn: Callable[[dict], torch.Tensor]) -> torch.Tensor:
        if not self.enabled:
            return loss_fn(inputs)
        logged = metrics(self.trainer, "train" if self.trainer.model.training else "eval")
        if self.steps_aside(inputs):
            if self.trainer.model.training:
                logged[SKIPPED_FRAC].append(0.0)
            return loss_fn(inputs)
        keep = informative_rows(inputs["advantages"])
        # Every process forwards the same number of rows (TRL gathers per-row metrics): the most any process keeps.
        counts = torch.tensor([keep.sum().item(), len(keep)], device=keep.device)
        counts = self.trainer.accelerator.gather(counts).view(-1, 2)  # every process, every call
        kept, width = counts[:, 0].sum().item(), max(counts[:, 0].max().item(), 1)
        logged[SKIPPED_FRAC].append(1.0 - width * len(counts) / counts[:, 1].sum().item())  # rows not forwarded
        batch = inputs if width == len(keep) and keep.all() else padded_rows(inputs, keep, width)
        before = {key: len(values) for key, values in logged.items()}
        loss = loss_fn(batch) * loss_scale(loss_normaliser(self.trainer.loss_type), inputs, keep, width)
        rename_forward_metrics(logged, before, drop=kept == 0)
        return loss


def rename_forward_metrics(logged: dict, before: dict, drop: bool) -> None:
    """Move the forward metrics appended since ``before`` to ``<name>/informative``; TRL's are dropped when no
    process had an informative row (they would read 0 over no tokens)."""
    for key in (*TRL_FORWARD_METRICS, *OWN_FORWARD_METRICS):
        values = logged.get(key)
        start = before.get(key, 0)
        if values is None or len(values) <= start:
            continue
        new = values[start:]
        del values[start:]
        if not (drop and key in TRL_FORWARD_METRICS):
            logged[key + SUFFIX].extend(new)
        if not values:
            del logged[key]
