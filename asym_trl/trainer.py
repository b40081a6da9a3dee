"""AsymGRPOTrainer: TRL's GRPOTrainer with the AsymGRPO advantage family."""

from __future__ import annotations

import textwrap
import warnings

import torch

from .advantages import entropy_shaped_advantages
from .config import AsymGRPOConfig
from .estimators import ESTIMATOR_PARAMS, get_estimator
from .group_diagnostics import GroupDiagnostics
from .rewards import REWARD_FUNCS
from .trl_compat import GRPOHooks, TokenStats, disable_entropy_bonus, replace_logged_advantages
from .vllm_sync import GuardedVLLMGeneration, vllm_generation_class

DEGENERATE_BATCHES = 10  # generation batches in a row with all advantages 0 before a warning


def non_binary_rewards_message(rewards: torch.Tensor, rewards_per_func: torch.Tensor, names: list[str]) -> str:
    """'' when the scorable deciding ``rewards`` are all 0 or 1; else which rewards were seen, per function."""
    seen = rewards[~torch.isnan(rewards)]
    if bool(((seen == 0) | (seen == 1)).all()):
        return ""
    per_func = ", ".join(
        f"{name} in [{col.nan_to_num(float('inf')).min().item():g}, {col.nan_to_num(float('-inf')).max().item():g}]"
        for name, col in zip(names, rewards_per_func.T, strict=True)
    )
    values = sorted(set(seen.tolist()))
    shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
    return f"the rewards deciding success take the values {{{shown}}} ({per_func})"


class AsymGRPOTrainer(GRPOHooks):
    """GRPOTrainer whose advantages come from ``args.advantage_estimator`` (see [`AsymGRPOConfig`]).

    A drop-in: same constructor arguments as [`~trl.GRPOTrainer`]; ``args`` must be an [`AsymGRPOConfig`].
    The only changes are:

    1. **Advantages** (:meth:`rescore`): after TRL has scored a batch, every group's advantages are recomputed by the
       registered estimator (:mod:`asym_trl.estimators`) from the rewards TRL gathered from all processes; a rollout
       succeeds when the deciding reward reaches ``success_threshold``; this process keeps its slice, and the logged
       advantages (completions table) are fixed.
    2. **Entropy advantage** (``entropy_adv_alpha > 0``): inside the loss, each token's advantage becomes
       ``A + min(alpha * H_t, |A| / kappa)`` (Cheng et al.), from the entropies TRL computes for the loss.
    3. **Scoped entropy bonus** (``entropy_scope`` other than ``"all"``): TRL's bonus applies to the tokens of
       correct (or incorrect) rollouts only, with TRL's per-token weight.
    4. **Diagnostics** (``log_diagnostics``): a :class:`~asym_trl.group_diagnostics.GroupDiagnostics` callback is fed
       each scored batch and each loss micro-batch (``docs/diagnostics.md``).
    5. **Weight sync** (``use_vllm``): after every push the engine is checked end to end to serve the trainer's
       weights (``vllm_sync_check``); with ``vllm_weight_sync="disk"`` the push goes through disk and the server's
       worker extension instead of NCCL (:mod:`asym_trl.vllm_sync`).

    How they reach TRL's private methods (pinned to trl 1.16.0) is :mod:`asym_trl.trl_compat`.
    """

    _tag_names = ["trl", "grpo", "asym_trl", "asymgrpo"]
    _name = "AsymGRPO"
    _paper = {
        "title": "Rethinking Exploration in RLVR: Bidirectional Entropy Modulation",
        "id": None,
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{asymgrpo,
                title        = {{Rethinking Exploration in RLVR: Bidirectional Entropy Modulation}},
                note         = {AsymGRPO},
            }"""),
    }

    def __init__(self, model, reward_funcs=None, args=None, *more, **kwargs):
        if args is None:  # as TRL does for GRPOConfig
            name = model if isinstance(model, str) else model.config._name_or_path
            args = AsymGRPOConfig(f"{str(name).split('/')[-1]}-AsymGRPO")
        if not isinstance(args, AsymGRPOConfig):
            raise TypeError(f"AsymGRPOTrainer needs args=AsymGRPOConfig(...), got {type(args).__name__}")
        with vllm_generation_class(args):
            super().__init__(model, reward_funcs, args, *more, **kwargs)  # TRL's checks first: ours never mask them
        args.check_success_rule(len(self.reward_funcs))  # environment rewards included
        self._degenerate_batches = 0
        self.estimator = get_estimator(args.advantage_estimator)
        if isinstance(getattr(self, "vllm_generation", None), GuardedVLLMGeneration):
            self.vllm_generation.current_step = lambda: self.state.global_step
        self._success_func_index = self._resolve_success_func()
        self._scoped_entropy = args.entropy_scope != "all"
        if self._scoped_entropy:
            disable_entropy_bonus(self)  # TRL's bonus covers every token; ours is added in finish_loss
        self.diagnostics = GroupDiagnostics(self) if args.log_diagnostics else None
        if self.diagnostics is not None:
            self.add_callback(self.diagnostics)

    def train(self, resume_from_checkpoint=None, *more, **kwargs):
        if self.diagnostics is not None:
            self.diagnostics.resume_from(resume_from_checkpoint)  # the state that spans steps, from the checkpoint
        return super().train(resume_from_checkpoint, *more, **kwargs)

    # ----------------------------------------------------------------- 1. advantages
    def _resolve_success_func(self) -> int | None:
        """Column of the reward that decides success; None = TRL's weighted sum (dr_grpo, grpo by default, or
        'weighted_sum')."""
        name = self.args.success_reward_func
        if not self.estimator.uses_success or name == "weighted_sum":
            return None
        if name is None:
            return 0 if self.estimator.binary else None  # binary: the only reward function, unweighted
        names = self.reward_func_names
        if name not in names and name in REWARD_FUNCS:  # a registry name, e.g. "accuracy"
            name = REWARD_FUNCS[name].__name__ if REWARD_FUNCS[name].__name__ in names else name
        if name not in names:
            raise ValueError(
                f"success_reward_func={self.args.success_reward_func!r} is not a reward function; have {names}"
            )
        return names.index(name)

    def _estimator_rewards(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """The (N,) rewards the estimator sees: one function's raw score, or TRL's weighted sum (NaN if unscorable)."""
        if self._success_func_index is not None:
            return rewards_per_func[:, self._success_func_index]
        weights = self.reward_weights.to(rewards_per_func.device)
        rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        return rewards.masked_fill(torch.isnan(rewards_per_func).all(dim=1), float("nan"))

    def rescore(self, output, inputs, rewards_per_func):
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        rewards = self._estimator_rewards(rewards_per_func)
        self._check_binary(rewards, rewards_per_func)
        params = {name: getattr(self.args, name) for name in ESTIMATOR_PARAMS} | {
            "success_threshold": self.args.threshold
        }
        advantages = self.estimator(rewards.view(-1, num_generations), **params).reshape(-1)
        success = rewards >= self.args.threshold  # NaN compares False
        if mode == "train":
            self._watch_degenerate(advantages)

        rank = self.accelerator.process_index
        local = slice(rank * len(inputs), (rank + 1) * len(inputs))
        output["advantages"] = advantages[local].to(output["advantages"].dtype)
        output["success"] = success[local]
        output["scorable"] = ~torch.isnan(rewards[local])
        if self.diagnostics is not None:
            self.diagnostics.on_generation(mode, rewards, advantages, success, num_generations)
            output["rollout_index"] = torch.arange(len(rewards), device=rewards.device)[local]
        replace_logged_advantages(self, advantages)
        return output

    def _check_binary(self, rewards, rewards_per_func):
        """An estimator of binary successes on rewards outside {0, 1}, with no success rule set: stop (issue #11)."""
        args = self.args
        if not self.estimator.binary or args.success_threshold is not None or args.success_reward_func is not None:
            return
        message = non_binary_rewards_message(rewards, rewards_per_func, self.reward_func_names)
        if message:
            raise ValueError(
                f"advantage_estimator={self.estimator.name!r} needs binary successes, but {message}; at the "
                f"default success_threshold={args.threshold} most groups would be all-solved or all-failed and "
                "train nothing. Set success_threshold (a rollout succeeds when its reward >= it) and/or "
                "success_reward_func (the reward that decides success, or 'weighted_sum'), or use "
                "advantage_estimator='grpo' (TRL's GRPO on raw rewards) or 'dr_grpo'"
            )

    def _watch_degenerate(self, advantages):
        """Warn when every advantage of DEGENERATE_BATCHES generation batches in a row is 0 (nothing trains)."""
        self._degenerate_batches = self._degenerate_batches + 1 if bool((advantages == 0).all()) else 0
        if self._degenerate_batches == DEGENERATE_BATCHES:
            warnings.warn(
                f"!!! {DEGENERATE_BATCHES} generation batches in a row with every advantage 0: no gradient from the "
                "policy loss. Every group is degenerate (all rollouts succeed or all fail"
                f"{'' if self.estimator.binary else ', or all rewards are equal'}): check the rewards against "
                f"success_threshold={self.args.threshold} and success_reward_func, or the task's difficulty !!!",
                stacklevel=2,
            )

    # ----------------------------------------------------------------- 2-4. the loss
    def wants_token_stats(self) -> bool:
        return self.args.entropy_adv_alpha > 0 or self._scoped_entropy or self.diagnostics is not None

    def shape_token_advantages(self):
        if self.args.entropy_adv_alpha <= 0:
            return None
        alpha, kappa = self.args.entropy_adv_alpha, self.args.entropy_adv_kappa
        return lambda advantages, entropies: entropy_shaped_advantages(advantages, entropies, alpha, kappa)

    def finish_loss(self, loss, inputs, stats: TokenStats):
        if self._scoped_entropy:
            loss = loss - self.args.entropy_coef * self._scoped_entropy_term(inputs, stats.entropies)
        if self.diagnostics is not None:
            self.diagnostics.on_loss_micro_batch(inputs, stats)
        return loss

    def _scoped_entropy_term(self, inputs, entropies: torch.Tensor) -> torch.Tensor:
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
        term = (entropies * scoped).sum() / mask.sum().clamp(min=1.0)
        if self.model.training:
            term = term / self.current_gradient_accumulation_steps
        return term
