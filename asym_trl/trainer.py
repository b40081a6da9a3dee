"""AsymGRPOTrainer: TRL's GRPOTrainer with the AsymGRPO advantage family."""

from __future__ import annotations

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from . import diagnostics as diag
from .advantages import entropy_shaped_advantages
from .config import AsymGRPOConfig
from .estimators import ESTIMATOR_PARAMS, get_estimator
from .rewards import REWARD_FUNCS
from .vllm_sync import disk_weight_sync

# Extra model inputs TRL's loss forwards to _get_per_token_logps_and_entropies (multimodal models).
_MODEL_INPUT_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


class AsymGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose advantages come from ``args.advantage_estimator`` (see [`AsymGRPOConfig`]).

    A drop-in: same constructor arguments as [`~trl.GRPOTrainer`]; ``args`` must be an
    [`AsymGRPOConfig`].  TRL methods overridden (pinned to trl 1.16.0; see
    ``tests/test_trl_contract.py``):

    * ``_calculate_rewards`` -- only records the rewards it returns, which TRL has already
      gathered from all processes in global order.
    * ``_generate_and_score_completions`` -- calls TRL's, then recomputes the advantages of
      every group from those global rewards, keeps this process's slice, fixes the logged
      advantages (completions table) and adds per-rollout ``success`` / ``scorable`` masks to the batch
      (and, with ``log_diagnostics``, the group diagnostics and a global ``rollout_index``).
    * ``_compute_loss`` / ``_get_per_token_logps_and_entropies`` -- only when the entropy
      advantage (``entropy_adv_alpha > 0``), a scoped entropy bonus (``entropy_scope`` other
      than ``"all"``) or ``log_diagnostics`` is on: the token entropies and log-probs TRL computes
      for the loss shape the per-token advantages, feed the bonus and the diagnostics.  Otherwise
      TRL's loss runs untouched.
    * ``VLLMGeneration.sync_weights`` (TRL's server-mode weight push, NCCL only) -- only with
      ``vllm_weight_sync="disk"``: the server reloads the weights from disk instead
      (``asym_trl.vllm_sync``).

    With ``log_diagnostics`` a callback also measures the likelihood displacement after the
    optimizer step, logs the epoch-wise group shares and saves ``trainer_state.json`` at the end
    of training (see ``docs/diagnostics.md``).
    """

    def __init__(self, model, reward_funcs=None, args=None, *more, **kwargs):
        if args is None:  # as TRL does for GRPOConfig
            name = model if isinstance(model, str) else model.config._name_or_path
            args = AsymGRPOConfig(f"{str(name).split('/')[-1]}-AsymGRPO")
        if not isinstance(args, AsymGRPOConfig):
            raise TypeError(f"AsymGRPOTrainer needs args=AsymGRPOConfig(...), got {type(args).__name__}")
        args.check_success_rule(len(reward_funcs) if isinstance(reward_funcs, list) else 1)  # before any model load
        with disk_weight_sync(args):
            super().__init__(model, reward_funcs, args, *more, **kwargs)
        self._success_func_index = self._resolve_success_func()
        self._scoped_entropy = self.args.entropy_scope != "all"
        if self._scoped_entropy:
            self._entropy_bonus_enabled = False  # TRL's bonus covers every token; ours is added in _compute_loss
        self._loss_inputs = None  # the micro-batch whose loss is being computed (see _compute_loss)
        self._loss_entropies = self._loss_logps = None
        self._init_diagnostics()

    # ----------------------------------------------------------------- advantages
    def _resolve_success_func(self) -> int | None:
        """Column of the reward that decides success; None = TRL's weighted sum (dr_grpo, or 'weighted_sum')."""
        name = self.args.success_reward_func
        if not get_estimator(self.args.advantage_estimator).uses_success or name == "weighted_sum":
            return None
        if name is None:
            return 0  # the only reward function, unweighted
        names = self.reward_func_names
        if name not in names and name in REWARD_FUNCS:  # a registry name, e.g. "accuracy"
            name = REWARD_FUNCS[name].__name__ if REWARD_FUNCS[name].__name__ in names else name
        if name not in names:
            raise ValueError(
                f"success_reward_func={self.args.success_reward_func!r} is not a reward function; have {names}"
            )
        return names.index(name)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._gathered_rewards_per_func = rewards_per_func
        return rewards_per_func

    def _estimator_rewards(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """The (N,) rewards the estimator sees: one function's raw score, or TRL's weighted sum (NaN if unscorable)."""
        if self._success_func_index is not None:
            return rewards_per_func[:, self._success_func_index]
        weights = self.reward_weights.to(rewards_per_func.device)
        rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        return rewards.masked_fill(torch.isnan(rewards_per_func).all(dim=1), float("nan"))

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        args = self.args

        rewards = self._estimator_rewards(self._gathered_rewards_per_func)
        grouped = rewards.view(-1, num_generations)
        params = {name: getattr(args, name) for name in ESTIMATOR_PARAMS}
        advantages = get_estimator(args.advantage_estimator)(grouped, **params).reshape(-1)
        success = rewards >= args.success_threshold  # NaN compares False

        local = slice(self.accelerator.process_index * len(inputs), (self.accelerator.process_index + 1) * len(inputs))
        output["advantages"] = advantages[local].to(output["advantages"].dtype)
        output["success"] = success[local]
        output["scorable"] = ~torch.isnan(rewards[local])
        if args.log_diagnostics:
            self._record_group_diagnostics(mode, rewards, advantages, success, num_generations)
            output["rollout_index"] = torch.arange(len(rewards), device=rewards.device)[local]

        # TRL appended its own advantages for all N rollouts to the completions table: replace them.
        logged = self._logs["advantages"]
        for _ in range(min(len(advantages), len(logged))):
            logged.pop()
        logged.extend(advantages.tolist())
        return output

    # ----------------------------------------------------------------- loss
    def _compute_loss(self, model, inputs):
        if not (self.args.entropy_adv_alpha > 0 or self._scoped_entropy or self.args.log_diagnostics):
            return super()._compute_loss(model, inputs)
        # A shallow copy: the entropy hook may replace "advantages" by per-token values, and the buffered
        # micro-batch is reused when num_iterations > 1.
        self._loss_inputs = dict(inputs)
        try:
            loss = super()._compute_loss(model, self._loss_inputs)
            if self._scoped_entropy:
                loss = loss - self.args.entropy_coef * self._scoped_entropy_term(inputs)
            if self.args.log_diagnostics:
                self._record_loss_diagnostics(inputs)
        finally:
            self._loss_inputs = self._loss_entropies = self._loss_logps = None
        return loss

    def _get_per_token_logps_and_entropies(self, *args, compute_entropy=False, **kwargs):
        logps, entropies, *rest = super()._get_per_token_logps_and_entropies(
            *args, compute_entropy=compute_entropy, **kwargs
        )
        if compute_entropy and self._loss_inputs is not None:  # called from _compute_loss for the policy
            self._loss_entropies, self._loss_logps = entropies, logps
            if self.args.entropy_adv_alpha > 0:
                self._loss_inputs["advantages"] = entropy_shaped_advantages(
                    self._loss_inputs["advantages"],
                    entropies,
                    alpha=self.args.entropy_adv_alpha,
                    kappa=self.args.entropy_adv_kappa,
                )
        return (logps, entropies, *rest)

    def _scoped_entropy_term(self, inputs) -> torch.Tensor:
        """Mean token entropy restricted to correct (or incorrect) rollouts, with TRL's per-token weight.

        The denominator is every completion token of the micro-batch (as for TRL's bonus), so a token in
        scope gets the same weight ``entropy_coef / num_tokens`` as under ``entropy_scope="all"``; out of
        scope tokens get none.  Divided by the accumulation steps in training, as TRL's own bonus.
        """
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        success = inputs["success"]  # incorrect = scored and not a success (unscorable rollouts are neither)
        in_scope = success if self.args.entropy_scope == "positive" else inputs["scorable"] & ~success
        scoped = mask * in_scope.unsqueeze(1).to(mask.dtype)
        term = (self._loss_entropies * scoped).sum() / mask.sum().clamp(min=1.0)
        if self.model.training:
            term = term / self.current_gradient_accumulation_steps
        return term

    # ----------------------------------------------------------------- diagnostics (docs/diagnostics.md)
    # Every reduction below runs on every process in the same order: the conditions depend only on global
    # state (the step counters, the gathered rewards), never on local data.
    def _init_diagnostics(self):
        self._diag_groups = {}  # mode -> global tensors of the latest generation batch
        self._diag_token_sums = {}  # mode -> entropy sums (correct / incorrect) of the current optimizer step
        self._diag_cov_records = []  # (rollout_index, Eq. 12 log-prob) from the first pass over a generation
        self._diag_cov_totals = None  # Eq. 14 (sums, counts) over the window
        self._diag_epoch_counts = torch.zeros(3, dtype=torch.long)  # all-solved, none-solved, scorable groups
        self._diag_displacement = []  # micro-batches of the optimizer step whose displacement is measured
        if self.args.log_diagnostics:
            self.add_callback(_DiagnosticsCallback(self))

    def _record_group_diagnostics(self, mode, rewards, advantages, success, num_generations):
        """Group statistics of one generation batch, from the global (gathered) tensors: identical everywhere."""
        valid = ~torch.isnan(rewards)
        k, n = diag.group_counts(success.view(-1, num_generations), valid.view(-1, num_generations))
        levels = diag.accuracy_levels(k, n, num_generations)
        counts = diag.solve_counts(k, n)
        metrics = self._metrics[mode]
        all_solved, none_solved = diag.ratio(counts[:2].double(), counts[2:].double().expand(2)).tolist()
        metrics["groups/all_solved"].append(all_solved)
        metrics["groups/none_solved"].append(none_solved)
        width = len(str(num_generations))
        for j, share in enumerate(diag.accuracy_histogram(levels, num_generations).tolist()):
            metrics[f"groups/p_{j:0{width}d}of{num_generations}"].append(share)
        for name, value in diag.advantage_stats(advantages, success, valid).items():
            metrics[f"advantages/{name}"].append(value)
        if mode == "train":
            self._diag_epoch_counts += counts.cpu()
        self._diag_groups[mode] = dict(
            advantages=advantages,
            success=success,
            valid=valid,
            levels=levels,
            group_size=num_generations,
            step=self.state.global_step,
        )

    def _record_loss_diagnostics(self, inputs):
        """Token entropy on correct / incorrect rollouts, Cov(p) records and displacement inputs of a micro-batch."""
        mode = "train" if self.model.training else "eval"
        groups = self._diag_groups.get(mode)
        if groups is None or "rollout_index" not in inputs:
            return
        idx = inputs["rollout_index"]
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        correct, valid = groups["success"][idx], groups["valid"][idx]
        sums = diag.split_token_sums(self._loss_entropies.detach(), mask, correct, valid & ~correct)
        self._diag_token_sums[mode] = sums + self._diag_token_sums.get(mode, 0.0)
        # One value per optimizer step: token-weighted over all its micro-batches and processes.
        if mode == "eval" or self.accelerator.sync_gradients:
            total = self.accelerator.reduce(self._diag_token_sums.pop(mode), reduction="sum")
            self._metrics[mode]["entropy/correct"].append(diag.ratio(total[0], total[1]).item())
            self._metrics[mode]["entropy/incorrect"].append(diag.ratio(total[2], total[3]).item())
        if mode != "train":
            return
        logps = self._loss_logps.detach()
        self._record_covariance(inputs, idx, logps, mask, groups)
        every = self.args.likelihood_displacement_steps
        if every and (self.state.global_step + 1) % every == 0:  # the step this micro-batch belongs to
            keys = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", *_MODEL_INPUT_KEYS)
            batch = {key: inputs.get(key) for key in keys}
            self._diag_displacement.append((batch, mask, correct, logps))  # logps: the policy before the update

    def _record_covariance(self, inputs, idx, logps, mask, groups):
        """Eq. 12 log-probs of the sampling policy, kept on the first pass over a generation batch.

        A group's rollouts are spread over micro-batches and processes, so they are collected by global
        ``rollout_index`` and gathered once the first pass is complete.  The log-probs are those of the policy
        that sampled: TRL's ``old_per_token_logps`` when it computed them at generation time, else the loss's
        own (then no update has happened since the generation: that is when TRL skips them).
        """
        if groups["step"] >= self.args.cov_window_steps:
            return
        pass_step = self._step % (self.args.steps_per_generation * self.num_iterations)
        if pass_step >= self.args.steps_per_generation:
            return
        old = inputs.get("old_per_token_logps")
        self._diag_cov_records.append((idx, diag.length_normalized_logps(logps if old is None else old, mask)))
        if pass_step == self.args.steps_per_generation - 1:
            self._finish_covariance(groups)

    def _finish_covariance(self, groups):
        idx = self.accelerator.gather(torch.cat([r[0] for r in self._diag_cov_records]))
        values = self.accelerator.gather(torch.cat([r[1] for r in self._diag_cov_records]).float())
        self._diag_cov_records = []
        size = groups["group_size"]
        norm_logps = torch.full(groups["advantages"].shape, float("nan"), device=values.device)
        norm_logps[idx] = values
        valid = groups["valid"] & ~torch.isnan(norm_logps)
        cov = diag.group_covariance(
            norm_logps.view(-1, size), groups["advantages"].view(-1, size), valid.view(-1, size)
        )
        sums, counts = (t.cpu() for t in diag.covariance_level_sums(cov, groups["levels"], size))
        if self._diag_cov_totals is not None:
            sums, counts = sums + self._diag_cov_totals[0], counts + self._diag_cov_totals[1]
        self._diag_cov_totals = (sums, counts)
        means = diag.ratio(sums, counts)
        width = len(str(size))
        for j in range(1, size):  # levels 0 and G are 0 by construction
            if counts[j] > 0:  # the running window average: the last value logged is Cov(p) over the window
                self._metrics["train"][f"cov/p_{j:0{width}d}of{size}"] = [means[j].item()]

    def _diagnostics_step_end(self, control):
        """After each optimizer step: likelihood displacement, and the epoch-wise shares at an epoch's end."""
        if self._diag_displacement:
            self._measure_likelihood_displacement()
        state = self.state
        if float(state.epoch).is_integer() or state.global_step >= state.max_steps:
            all_solved, none_solved, scored = self._diag_epoch_counts.tolist()
            if scored:
                self._metrics["train"]["groups/epoch_all_solved"].append(all_solved / scored)
                self._metrics["train"]["groups/epoch_none_solved"].append(none_solved / scored)
                if self.args.logging_strategy != "no":
                    control.should_log = True  # one log entry closes every epoch
            self._diag_epoch_counts.zero_()

    def _measure_likelihood_displacement(self):
        """E[log pi_new(y) - log pi_old(y)] over the correct rollouts of the step just taken (§3.1).

        One no-grad forward per micro-batch of the step, on every process (sharded models need all ranks).
        """
        totals = 0.0
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            for batch, mask, correct, old_logps in self._diag_displacement:
                completion_ids = batch["completion_ids"]
                new_logps, _, _ = self._get_per_token_logps_and_entropies(
                    self.model,
                    torch.cat([batch["prompt_ids"], completion_ids], dim=1),
                    torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1),
                    completion_ids.size(1),
                    **{key: batch[key] for key in _MODEL_INPUT_KEYS},
                )
                totals = totals + diag.likelihood_displacement_sums(new_logps, old_logps, mask, correct)
        self._diag_displacement = []
        totals = self.accelerator.reduce(totals, reduction="sum")
        self._metrics["train"]["likelihood_displacement/correct"].append(diag.ratio(totals[0], totals[1]).item())
        self._metrics["train"]["likelihood_displacement/correct_per_token"].append(
            diag.ratio(totals[0], totals[2]).item()
        )


class _DiagnosticsCallback(TrainerCallback):
    """Runs the trainer's after-update diagnostics at the end of each optimizer step, before logging, and
    writes ``trainer_state.json`` (the log history the plots read) when training ends."""

    def __init__(self, trainer: AsymGRPOTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._diagnostics_step_end(control)

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.save_state()  # trainer_state.json in output_dir, for `asym-trl plot` (main process only)
