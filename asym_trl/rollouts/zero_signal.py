"""Exact zero-signal skip: rollouts whose gradient is exactly zero are left out of the loss forward/backward.

A rollout with advantage 0 adds ``0 x (ratio terms)`` to TRL's loss when there is no KL term, no entropy bonus,
no entropy advantage, no high-entropy token mask (its quantile spans the micro-batch) and no router loss: its
gradient is exactly zero.  :class:`ZeroSignalSkip` then

1. **regroups** (:meth:`ZeroSignalSkip.arrange`): within each run of ``gcd(steps_per_generation,
   gradient_accumulation_steps)`` micro-batches (it always falls in one optimizer step), the informative rows move
   to the last micro-batches (TRL's shuffled order kept otherwise), so that the first ones hold zero-signal rows
   only.  The optimizer step sums the same rows' gradients, with the same per-row weights (not for ``bnpo``, whose
   normaliser is the micro-batch's token count: no regrouping there);
2. **skips** a micro-step with no informative row on any process entirely (no forward, no backward), unless it
   ends the accumulation window (DDP/FSDP sync there, and per-step metrics are reduced) or DeepSpeed counts it;
3. **runs the rest on their informative rows only**, trailing all-padding columns trimmed, and rescales TRL's loss
   to the normaliser of the full micro-batch (:func:`asym_trl.trl_compat.loss_normaliser`), so the update is the
   one without the skip up to float summation order.  Every process forwards as many rows as the process that
   keeps the most (TRL gathers per-row metrics, which needs equal shapes); a micro-step that cannot be skipped
   but has no informative row runs one row with its completion masked out (loss and gradient exactly zero).

Metrics computed from the loss forward then cover the informative rollouts only and are logged as
``<name>/informative`` (``docs/zero_signal.md``); the skip steps aside (all rows, usual names) while the
diagnostics need every rollout's tokens (the Cov(p) window, likelihood-displacement steps) and in evaluation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from ..trl_compat import MODEL_INPUT_KEYS, entropy_bonus_enabled, loss_normaliser, metrics
from .rows import concat_rows, select_rows, trim_completions

logger = logging.getLogger(__name__)

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


def informative_rows(advantages: torch.Tensor) -> torch.Tensor:
    """Rows with a non-zero advantage (on any token, for per-token advantages)."""
    return advantages.reshape(len(advantages), -1).ne(0).any(dim=1)


def padded_rows(inputs: dict, keep: torch.Tensor, width: int, kept: int | None = None) -> dict:
    """The kept rows, then skipped rows with their completion masked out (zero loss, zero gradient) up to ``width``.
    ``kept``: ``keep``'s count when the caller knows it (else it is read from the device)."""
    order = torch.argsort((~keep).to(torch.uint8), stable=True)  # kept rows first, each part in its order
    batch = select_rows(inputs, order[:width])
    batch["completion_mask"][int(keep.sum()) if kept is None else kept :] = 0  # a fresh tensor (index_select)
    return batch


def regroup(micro_batches: list[dict]) -> list[dict]:
    """The rows of ``micro_batches`` (equal sizes), zero-signal rows first and informative rows last, each kind in
    its order, cut into micro-batches of the same sizes."""
    rows = concat_rows(micro_batches)
    keep = informative_rows(rows["advantages"])
    order = torch.argsort(keep.to(torch.uint8), stable=True).tolist()  # zero-signal rows first; one host read
    size = len(micro_batches[0]["advantages"])
    return [select_rows(rows, order[start : start + size]) for start in range(0, len(order), size)]


def loss_scale(kind: str, inputs: dict, keep: torch.Tensor, width: int) -> float | torch.Tensor:
    """Factor that turns TRL's loss of the ``width`` forwarded rows (the kept ones first, then masked-out padding)
    into their share of the full micro-batch's loss."""
    if kind == "global":
        return 1.0
    if kind == "rows":  # TRL divided by the forwarded row count
        return width / len(keep)
    mask = inputs["completion_mask"] if "tool_mask" not in inputs else inputs["completion_mask"] * inputs["tool_mask"]
    return (mask * keep.unsqueeze(1)).sum() / mask.sum().clamp(min=1.0)  # a device tensor: no host read


class ZeroSignalSkip:
    """Runs each training loss micro-batch on its informative rows only, when that leaves the update unchanged."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.blockers = skip_blockers(trainer) if trainer.args.skip_zero_signal else ["skip_zero_signal=False"]
        self.enabled = not self.blockers
        if trainer.args.skip_zero_signal and self.blockers:  # the default: the update is right either way
            reasons = "; ".join(self.blockers)
            logger.info(f"skip_zero_signal is off: zero-advantage rollouts count here ({reasons})")
        self._decided = (None, False)  # (global_step, steps aside): one decision per optimizer step
        args = trainer.args
        # Micro-batches [k*block, (k+1)*block) of a generation batch always share an optimizer step: windows start
        # at epoch starts and every gradient_accumulation_steps micro-steps after, and an epoch is a whole number of
        # generation batches x num_iterations (TRL's sampler drops an incomplete one), so every window start is a
        # multiple of the block from the buffer's start.
        self.block = math.gcd(args.steps_per_generation, args.gradient_accumulation_steps)
        self.regroups = self.enabled and self.block > 1 and loss_normaliser(trainer.loss_type) != "tokens"

    def arrange(self, micro_batches: list[dict]) -> list[dict]:
        """Regroup each run of ``block`` micro-batches so that its informative rows come last (see the module doc)."""
        if not self.regroups or any(micro_batches[0].get(key) is not None for key in MODEL_INPUT_KEYS):
            return micro_batches
        blocks = [micro_batches[start : start + self.block] for start in range(0, len(micro_batches), self.block)]
        return [batch for block in blocks for batch in regroup(block)]

    def may_skip_call(self) -> bool:
        """Whether a micro-step without an informative row on any process may skip the model: not the one that
        ends the accumulation window (gradient sync, per-step metric reductions) and not under DeepSpeed (its
        engine counts backward calls)."""
        trainer = self.trainer
        return not trainer.accelerator.sync_gradients and not trainer.is_deepspeed_enabled

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
        counts = torch.stack([keep.sum(), torch.tensor(len(keep), device=keep.device)])
        counts = self.trainer.accelerator.gather(counts).view(-1, 2).tolist()  # every process, every call; one read
        kept, width = sum(c[0] for c in counts), max(max(c[0] for c in counts), 1)
        if kept == 0 and self.may_skip_call():  # the same decision on every process
            logged[SKIPPED_FRAC].append(1.0)
            return torch.zeros((), device=keep.device, requires_grad=True)  # backward is a no-op
        logged[SKIPPED_FRAC].append(1.0 - width * len(counts) / sum(c[1] for c in counts))  # rows not forwarded
        here = counts[self.trainer.accelerator.process_index][0]  # this process's informative rows
        batch = inputs if width == here == len(keep) else padded_rows(inputs, keep, width, here)
        batch = trim_completions(batch, self.trainer.args.pad_to_multiple_of)
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
