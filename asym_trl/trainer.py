"""AsymGRPOTrainer: TRL's GRPOTrainer with the AsymGRPO advantage family."""

from __future__ import annotations

import torch
from trl import GRPOTrainer

from .advantages import ADVANTAGE_ESTIMATORS, entropy_shaped_advantages
from .config import AsymGRPOConfig
from .vllm_sync import disk_weight_sync


class AsymGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose advantages come from ``args.advantage_estimator`` (see [`AsymGRPOConfig`]).

    A drop-in: same constructor arguments as [`~trl.GRPOTrainer`]; ``args`` must be an
    [`AsymGRPOConfig`].  TRL methods overridden (pinned to trl 1.16.0; see
    ``tests/test_trl_contract.py``):

    * ``_calculate_rewards`` -- only records the rewards it returns, which TRL has already
      gathered from all processes in global order.
    * ``_generate_and_score_completions`` -- calls TRL's, then recomputes the advantages of
      every group from those global rewards, keeps this process's slice, fixes the logged
      advantages (completions table) and adds a per-rollout ``success`` mask to the batch.
    * ``_compute_loss`` / ``_get_per_token_logps_and_entropies`` -- only when the entropy
      advantage (``entropy_adv_alpha > 0``) or a scoped entropy bonus (``entropy_scope`` other
      than ``"all"``) is on: the token entropies TRL computes for the loss shape the per-token
      advantages and feed the bonus.  Otherwise TRL's loss runs untouched.
    * ``VLLMGeneration.sync_weights`` (TRL's server-mode weight push, NCCL only) -- only with
      ``vllm_weight_sync="disk"``: the server reloads the weights from disk instead
      (``asym_trl.vllm_sync``).
    """

    def __init__(self, *args, **kwargs):
        with disk_weight_sync(kwargs.get("args", args[2] if len(args) > 2 else None)):
            super().__init__(*args, **kwargs)
        if not isinstance(self.args, AsymGRPOConfig):
            raise TypeError(f"AsymGRPOTrainer needs args=AsymGRPOConfig(...), got {type(self.args).__name__}")
        name = self.args.success_reward_func
        if name is not None and name not in self.reward_func_names:
            raise ValueError(f"success_reward_func={name!r} is not a reward function; have {self.reward_func_names}")
        self._success_func_index = None if name is None else self.reward_func_names.index(name)
        self._scoped_entropy = self.args.entropy_scope != "all"
        if self._scoped_entropy:
            self._entropy_bonus_enabled = False  # TRL's bonus covers every token; ours is added in _compute_loss
        self._loss_inputs = None  # the micro-batch whose loss is being computed (see _compute_loss)
        self._loss_entropies = None

    # ----------------------------------------------------------------- advantages
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._gathered_rewards_per_func = rewards_per_func
        return rewards_per_func

    def _estimator_rewards(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """The (N,) rewards the estimator sees: TRL's weighted sum (NaN if unscorable) or one function's score."""
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
        advantages = ADVANTAGE_ESTIMATORS[args.advantage_estimator](
            grouped,
            beta_pos=args.beta_pos,
            beta_neg=args.beta_neg,
            success_threshold=args.success_threshold,
            pass_at_k=min(args.pass_at_k, num_generations),
        ).reshape(-1)
        success = rewards >= args.success_threshold  # NaN compares False

        local = slice(self.accelerator.process_index * len(inputs), (self.accelerator.process_index + 1) * len(inputs))
        output["advantages"] = advantages[local].to(output["advantages"].dtype)
        output["success"] = success[local]

        # TRL appended its own advantages for all N rollouts to the completions table: replace them.
        logged = self._logs["advantages"]
        for _ in range(min(len(advantages), len(logged))):
            logged.pop()
        logged.extend(advantages.tolist())
        return output

    # ----------------------------------------------------------------- loss
    def _compute_loss(self, model, inputs):
        if not (self.args.entropy_adv_alpha > 0 or self._scoped_entropy):
            return super()._compute_loss(model, inputs)
        # A shallow copy: the entropy hook may replace "advantages" by per-token values, and the buffered
        # micro-batch is reused when num_iterations > 1.
        self._loss_inputs = dict(inputs)
        try:
            loss = super()._compute_loss(model, self._loss_inputs)
            if self._scoped_entropy:
                loss = loss - self.args.entropy_coef * self._scoped_entropy_term(inputs)
        finally:
            self._loss_inputs = self._loss_entropies = None
        return loss

    def _get_per_token_logps_and_entropies(self, *args, compute_entropy=False, **kwargs):
        logps, entropies, *rest = super()._get_per_token_logps_and_entropies(
            *args, compute_entropy=compute_entropy, **kwargs
        )
        if compute_entropy and self._loss_inputs is not None:  # called from _compute_loss for the policy
            self._loss_entropies = entropies
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
        in_scope = inputs["success"] if self.args.entropy_scope == "positive" else ~inputs["success"]
        scoped = mask * in_scope.unsqueeze(1).to(mask.dtype)
        term = (self._loss_entropies * scoped).sum() / mask.sum().clamp(min=1.0)
        if self.model.training:
            term = term / self.current_gradient_accumulation_steps
        return term
