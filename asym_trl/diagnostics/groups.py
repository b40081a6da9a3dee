"""GroupDiagnostics: the paper's entropy-refinement diagnostics of a training run, as one stateful callback.

:class:`asym_trl.AsymGRPOTrainer` feeds it three events -- a scored generation batch (:meth:`on_generation`), a
loss micro-batch with the token statistics TRL computed for it (:meth:`on_loss_micro_batch`) and, as a
``TrainerCallback``, the end of each optimizer step -- and it logs through TRL's metrics (names in
``docs/diagnostics.md``; the math is :mod:`asym_trl.diagnostics.measures`).  It owns all its state.  The state that
spans steps (the epoch's group counts, the Cov(p) window) is written to ``group_diagnostics.json`` in every checkpoint
and read back on resume, so a resumed run logs what the straight run logs.

Every reduction runs on every process in the same order: the conditions depend only on global state (the step
counters, the gathered rewards), never on local data. In training, the values stay on the device
(:class:`DeferredMetrics`) until the step that logs them: one host read per logged step, not one per value.
"""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback
from trl.models.utils import disable_gradient_checkpointing

from ..trl_compat import MODEL_INPUT_KEYS, TokenStats, metrics, micro_step
from . import measures as diag

STATE_FILE = "group_diagnostics.json"  # in every checkpoint (lifecycle.checkpoints.ComponentStates)


class DeferredMetrics:
    """Training metrics kept as device tensors until :meth:`flush` moves them, in one host read, into TRL's metrics
    buffer (which ``log()`` averages): a read waits for the device, and a step's diagnostics hold a dozen values.
    Evaluation values are written at once (TRL logs them at the end of ``evaluate``, before any callback)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.pending: list[tuple[bool, tuple[str, ...], torch.Tensor]] = []  # (replace, names, values[, present])

    def append(self, mode: str, names: tuple[str, ...], values: torch.Tensor) -> None:
        """Append each value to its metric (``log()`` averages the values of its window)."""
        values = values.detach().reshape(-1)
        if mode != "train":
            for name, value in zip(names, values.tolist(), strict=True):
                metrics(self.trainer, mode)[name].append(value)
            return
        self.pending.append((False, names, values))

    def replace(self, names: tuple[str, ...], values: torch.Tensor, present: torch.Tensor) -> None:
        """Make each value the only one of its metric, where ``present`` (a running average: the last is logged)."""
        self.pending.append((True, names, torch.cat([values.detach().reshape(-1), present.reshape(-1)])))

    def flush(self) -> None:
        if not self.pending:
            return
        device = self.pending[0][2].device
        values = torch.cat([v.to(device, torch.float64) for _, _, v in self.pending]).tolist()  # the one read
        logged, i = metrics(self.trainer, "train"), 0
        for replace, names, _ in self.pending:
            for j, name in enumerate(names):
                if not replace:
                    logged[name].append(values[i + j])
                elif values[i + len(names) + j]:
                    logged[name] = [values[i + j]]
            i += len(names) * (2 if replace else 1)
        self.pending = []


class GroupDiagnostics(TrainerCallback):
    """Group shares, advantage and entropy split, Cov(p) and likelihood displacement of an AsymGRPO run."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.deferred = DeferredMetrics(trainer)
        self.groups = {}  # mode -> global tensors of the latest generation batch
        self.token_sums = {}  # mode -> entropy sums (correct / incorrect) of the current optimizer step
        self.cov_records = []  # (rollout_index, Eq. 12 log-prob) from the first pass over a generation
        self.cov_totals = None  # Eq. 14 (sums of Cov(log pi, A), counts, sums of Cov(log pi, r)) over the window
        self.epoch_counts = torch.zeros(3, dtype=torch.long)  # all-solved, none-solved, scorable (on the device)
        self.epoch_history = []  # one {step, epoch_index, epoch_all_solved, epoch_none_solved} per epoch
        self.displacement = []  # micro-batches of the optimizer step whose displacement is measured
        self.rollout_displacement = None  # (rollout step, correct rollouts of its generation batch) being measured

    # -- events ---------------------------------------------------------------------------------------------------
    def on_generation(self, mode, rewards, advantages, success, num_generations):
        """Group statistics of one generation batch, from the global (gathered) tensors: identical everywhere."""
        valid = ~torch.isnan(rewards)
        k, n = diag.group_counts(success.view(-1, num_generations), valid.view(-1, num_generations))
        levels = diag.accuracy_levels(k, n, num_generations, check=False)
        counts = diag.solve_counts(k, n)
        width = len(str(num_generations))
        names = ("groups/all_solved", "groups/none_solved")
        names += tuple(f"groups/p_{j:0{width}d}of{num_generations}" for j in range(num_generations + 1))
        names += tuple(f"advantages/{name}" for name in diag.ADVANTAGE_STATS)
        values = torch.cat(
            [
                diag.ratio(counts[:2].double(), counts[2:].double().expand(2)),
                diag.accuracy_histogram(levels, num_generations, check=False),
                diag.advantage_means(advantages, success, valid),
            ]
        )
        self.deferred.append(mode, names, values)
        if mode == "train":
            self.epoch_counts = self.epoch_counts.to(counts.device) + counts
        self.groups[mode] = dict(
            advantages=advantages,
            success=success,
            valid=valid,
            levels=levels,
            group_size=num_generations,
            step=self.trainer.state.global_step,
        )

    def replace_batch(self, mode, advantages, success, valid):
        """The batch the loss will see, after dynamic sampling replaced some of its groups (global tensors); the
        shares already logged counted every generated group."""
        groups = self.groups[mode]
        size = groups["group_size"]
        k, n = diag.group_counts(success.view(-1, size), valid.view(-1, size))
        levels = diag.accuracy_levels(k, n, size, check=False)
        groups.update(advantages=advantages, success=success, valid=valid, levels=levels)

    def on_loss_micro_batch(self, inputs, stats: TokenStats):
        """Token entropy on correct / incorrect rollouts, Cov(p) records and displacement inputs of a micro-batch."""
        trainer = self.trainer
        mode = "train" if trainer.model.training else "eval"
        groups = self.groups.get(mode)
        if groups is None or "rollout_index" not in inputs:
            return
        idx = inputs["rollout_index"]
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        correct, valid = groups["success"][idx], groups["valid"][idx]
        sums = diag.split_token_sums(stats.entropies.detach(), mask, correct, valid & ~correct)
        self.token_sums[mode] = sums + self.token_sums.get(mode, 0.0)
        # One value per optimizer step: token-weighted over all its micro-batches and processes.
        if mode == "eval" or trainer.accelerator.sync_gradients:
            total = trainer.accelerator.reduce(self.token_sums.pop(mode), reduction="sum")
            self.deferred.append(mode, ("entropy/correct", "entropy/incorrect"), diag.ratio(total[0::2], total[1::2]))
        if mode != "train":
            return
        logps = stats.logps.detach()
        self._record_covariance(inputs, idx, logps, mask, groups)
        self._record_rollout_displacement(inputs, logps, mask, correct, groups)
        every = trainer.args.likelihood_displacement_optimizer_steps
        if every and (trainer.state.global_step + 1) % every == 0:  # the step this micro-batch belongs to
            batch = {key: inputs.get(key) for key in _BATCH_KEYS}
            self.displacement.append((batch, mask, correct, logps))  # logps: the policy before the update

    def needs_every_rollout(self, step: int) -> bool:
        """Whether optimizer step ``step`` records from every rollout's tokens (the Cov(p) window, a displacement
        step, optimizer- or rollout-wise): the zero-signal skip steps aside then
        (``asym_trl.rollouts.zero_signal``)."""
        args = self.trainer.args
        every = args.likelihood_displacement_optimizer_steps
        if every and (step + 1) % every == 0:
            return True
        every = args.likelihood_displacement_rollout_steps
        rollouts = diag.rollouts_of_step(
            step, args.gradient_accumulation_steps, args.steps_per_generation, args.num_iterations
        )
        return any(r < args.cov_window_rollout_steps or (every and (r + 1) % every == 0) for r in rollouts)

    def on_step_end(self, args, state, control, **kwargs):
        """After each optimizer step, before logging: likelihood displacement; epoch-wise shares at an epoch end (and
        of the partial epoch at ``max_steps``)."""
        if self.displacement:
            self._measure_displacement(self.displacement, "optimizer_step")
            self.displacement = []
        if self.rollout_displacement is not None and self._rollout_step_closed(state.global_step):
            self._measure_displacement(self.rollout_displacement[1], "rollout_step")
            self.rollout_displacement = None
        last = state.global_step >= state.max_steps
        if float(state.epoch).is_integer() or last:
            all_solved, none_solved, scored = self.epoch_counts.tolist()
            if scored:
                self._log_epoch(math.ceil(state.epoch), state.global_step, all_solved / scored, none_solved / scored)
            self.epoch_counts = torch.zeros_like(self.epoch_counts)
        if control.should_log or last:  # TRL logs after this callback: the deferred values join its buffer now
            self.deferred.flush()
            metrics(self.trainer, "train")["rollout_step"] = [self.rollout_steps_done()]  # set, never averaged

    def _log_epoch(self, epoch: int, step: int, all_solved: float, none_solved: float) -> None:
        """The epoch's shares, in the next log entry TRL makes anyway (no extra entry, which would flush TRL's
        buffer): set, not appended, so ``log()`` never averages two epochs; ``groups/epoch_index`` says which
        epoch it is.  Every epoch's shares stay in ``epoch_history`` (a log interval may span two epoch ends)."""
        values = {"epoch_index": epoch, "epoch_all_solved": all_solved, "epoch_none_solved": none_solved}
        self.epoch_history.append({"step": step, **values})
        logged = metrics(self.trainer, "train")
        for name, value in values.items():
            logged[f"groups/{name}"] = [value]

    def rollout_steps_done(self) -> float:
        """The rollout steps done (``rollout_step``: the paper's training step, the x-axis of ``asym-trl plot``).
        Put in TRL's metrics at each logging step (:meth:`on_step_end`), so ``trainer_state.json`` and every logger
        (wandb, trackio, tensorboard) get it."""
        args, step = self.trainer.args, self.trainer.state.global_step
        return diag.rollout_steps_done(
            step, args.gradient_accumulation_steps, args.steps_per_generation, args.num_iterations
        )

    def on_log(self, args, state, control, **kwargs):
        """A log entry TRL made without the training metrics (an evaluation's) gets ``rollout_step`` too, in
        ``trainer_state.json``."""
        if state.log_history:
            state.log_history[-1].setdefault("rollout_step", self.rollout_steps_done())

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.save_state()  # trainer_state.json in output_dir, for `asym-trl plot` (main process only)

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The state that spans optimizer steps (JSON; float64 sums round-trip exactly)."""
        totals = None if self.cov_totals is None else [t.tolist() for t in self.cov_totals]
        return {"epoch_counts": self.epoch_counts.tolist(), "cov_totals": totals}

    def load_state_dict(self, state: dict) -> None:
        self.epoch_counts = torch.tensor(state["epoch_counts"], dtype=torch.long)
        totals = state["cov_totals"]
        self.cov_totals = None if totals is None else tuple(torch.tensor(t, dtype=torch.float64) for t in totals)

    # -- Cov(p) and likelihood displacement -----------------------------------------------------------------------
    def _record_covariance(self, inputs, idx, logps, mask, groups):
        """Eq. 12 log-probs of the sampling policy, kept on the first pass over a generation batch.

        A group's rollouts are spread over micro-batches and processes, so they are collected by global
        ``rollout_index`` and gathered once the first pass is complete.  The log-probs are those of the policy
        that sampled: TRL's ``old_per_token_logps`` when it computed them at generation time, else the loss's
        own (then no update has happened since the generation: that is when TRL skips them).
        """
        args = self.trainer.args
        rollout = diag.rollout_step(
            groups["step"], args.gradient_accumulation_steps, args.steps_per_generation, args.num_iterations
        )
        if rollout >= args.cov_window_rollout_steps:
            return
        pass_step = micro_step(self.trainer) % (args.steps_per_generation * args.num_iterations)
        if pass_step >= args.steps_per_generation:
            return
        old = inputs.get("old_per_token_logps")
        self.cov_records.append((idx, diag.length_normalized_logps(logps if old is None else old, mask)))
        if pass_step == args.steps_per_generation - 1:
            self._finish_covariance(groups)

    def _finish_covariance(self, groups):
        accelerator = self.trainer.accelerator
        idx = accelerator.gather(torch.cat([r[0] for r in self.cov_records]))
        values = accelerator.gather(torch.cat([r[1] for r in self.cov_records]).float())
        self.cov_records = []
        size = groups["group_size"]
        norm_logps = torch.full(groups["advantages"].shape, float("nan"), device=values.device)
        norm_logps[idx] = values
        valid = groups["valid"] & ~torch.isnan(norm_logps)
        x, valid = norm_logps.view(-1, size), valid.view(-1, size)
        # Cov(log pi_bar, A) (Eq. 13) and the estimator-independent Cov(log pi_bar, r), r the success indicator
        sums, counts = diag.covariance_level_sums(
            diag.group_covariance(x, groups["advantages"].view(-1, size), valid), groups["levels"], size, check=False
        )
        sums_r, _ = diag.covariance_level_sums(
            diag.group_covariance(x, groups["success"].view(-1, size).double(), valid),
            groups["levels"],
            size,
            check=False,
        )
        totals = (sums, counts, sums_r)
        if self.cov_totals is not None:
            totals = tuple(t + old.to(t.device) for t, old in zip(totals, self.cov_totals, strict=True))
        self.cov_totals = totals
        sums, counts, sums_r = totals
        width = len(str(size))
        for name, means in (("cov", diag.ratio(sums, counts)), ("cov_r", diag.ratio(sums_r, counts))):
            names = tuple(f"{name}/p_{j:0{width}d}of{size}" for j in range(1, size))  # 0 and G: 0 by construction
            self.deferred.replace(names, means[1:size], counts[1:size] > 0)  # the running window average

    def _record_rollout_displacement(self, inputs, logps, mask, correct, groups):
        """Keep the correct rollouts of a measured rollout step's generation batch on its first pass (§3.1).

        Only their ids, masks and the log-probs of the policy that sampled them are kept (``old_per_token_logps``
        when TRL computed them, else the loss's own: no update has happened yet).  A micro-batch without a correct
        rollout keeps one row with weight 0, so every process runs the same forwards (sharded models).  Records
        start at the first micro-batch of the pass: a run resumed inside a rollout step skips that step.
        """
        args = self.trainer.args
        every = args.likelihood_displacement_rollout_steps
        rollout = diag.rollout_step(
            groups["step"], args.gradient_accumulation_steps, args.steps_per_generation, args.num_iterations
        )
        pass_step = micro_step(self.trainer) % (args.steps_per_generation * args.num_iterations)
        if not every or (rollout + 1) % every or pass_step >= args.steps_per_generation:
            return
        if pass_step == 0:
            self.rollout_displacement = (rollout, [])
        elif self.rollout_displacement is None or self.rollout_displacement[0] != rollout:
            return
        if any(inputs.get(key) is not None for key in MODEL_INPUT_KEYS):
            rows = torch.arange(len(correct), device=correct.device)  # image inputs are not per row: keep them all
        elif bool(correct.any()):
            rows = correct.nonzero().squeeze(1)
        else:
            rows = correct.new_zeros(1, dtype=torch.long)
        used = inputs["completion_mask"][rows].any(dim=0).nonzero()
        width = int(used.max()) + 1 if len(used) else 1  # trailing padding dropped
        batch = {key: inputs[key][rows] for key in _TEXT_KEYS} | {key: inputs.get(key) for key in MODEL_INPUT_KEYS}
        batch["completion_ids"], batch["completion_mask"] = (batch[k][:, :width] for k in _TEXT_KEYS[2:])
        old = inputs.get("old_per_token_logps")
        old = (logps if old is None else old)[rows, :width]
        self.rollout_displacement[1].append((batch, mask[rows, :width], correct[rows], old))

    def _rollout_step_closed(self, global_step: int) -> bool:
        """Whether optimizer step ``global_step`` (1-based, just taken) is the last one of its rollout step."""
        args = self.trainer.args
        return global_step * args.gradient_accumulation_steps % (args.steps_per_generation * args.num_iterations) == 0

    def _measure_displacement(self, records, unit: str):
        """E[log pi_new(y) - log pi_old(y)] over the recorded correct rollouts (§3.1), after the update of one
        ``unit``: ``rollout_step`` (all its optimizer steps: the paper's Fig. 2 d,h) or ``optimizer_step``.

        One no-grad forward per recorded micro-batch, on every process (sharded models need all ranks).
        """
        trainer = self.trainer
        totals = 0.0
        no_checkpointing = disable_gradient_checkpointing(trainer.model, trainer.args.gradient_checkpointing_kwargs)
        with torch.no_grad(), no_checkpointing:
            for batch, mask, correct, old_logps in records:
                new_logps = trainer.policy_logps(trainer.model, batch)
                totals = totals + diag.likelihood_displacement_sums(new_logps, old_logps, mask, correct)
        totals = trainer.accelerator.reduce(totals, reduction="sum")
        logged = metrics(trainer, "train")
        logged[f"likelihood_displacement/{unit}"].append(diag.ratio(totals[0], totals[1]).item())
        logged[f"likelihood_displacement/{unit}_per_token"].append(diag.ratio(totals[0], totals[2]).item())


_TEXT_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
_BATCH_KEYS = (*_TEXT_KEYS, *MODEL_INPUT_KEYS)
