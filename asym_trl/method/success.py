"""Which rollouts succeed, and the checks that a run never trains on zero signal without saying so.

A rollout succeeds when the reward that decides success (one reward function's raw score, or TRL's weighted sum of
all of them) reaches ``success_threshold``; NaN (every function returned ``None``) is unscorable: neither success nor
failure. Estimators of binary successes (the β family and its relatives) stop at the first batch whose deciding
rewards are not all 0 or 1 while the user set no rule (``docs/estimators.md``); any estimator warns loudly after
``DEGENERATE_BATCHES`` generation batches in a row whose advantages are all 0.
"""

from __future__ import annotations

import warnings

import torch

from ..task.rewards import REWARD_FUNCS

__all__ = ["DEGENERATE_BATCHES", "DegenerateWatch", "SuccessRule", "non_binary_rewards_message"]

DEGENERATE_BATCHES = 10  # generation batches in a row with all advantages 0 before a warning


def non_binary_rewards_message(rewards: torch.Tensor, rewards_per_func: torch.Tensor, names: list[str]) -> str:
    """'' when the scorable deciding ``rewards`` are all 0 or 1; else which rewards were seen, per function (one
    host read when they are binary)."""
    if bool(((rewards == 0) | (rewards == 1) | torch.isnan(rewards)).all()):
        return ""
    seen = rewards[~torch.isnan(rewards)]
    per_func = ", ".join(
        f"{name} in [{col.nan_to_num(float('inf')).min().item():g}, {col.nan_to_num(float('-inf')).max().item():g}]"
        for name, col in zip(names, rewards_per_func.T, strict=True)
    )
    values = sorted(set(seen.tolist()))
    shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
    return f"the rewards deciding success take the values {{{shown}}} ({per_func})"


class SuccessRule:
    """The deciding reward and the threshold of a run (``success_reward_func``, ``success_threshold``)."""

    def __init__(self, args, estimator, reward_func_names: list[str], reward_weights: torch.Tensor):
        self.args, self.estimator, self.names, self.weights = args, estimator, reward_func_names, reward_weights
        self.threshold = args.threshold
        self.column = self._column()

    def _column(self) -> int | None:
        """Column of the reward that decides success; None = TRL's weighted sum (dr_grpo, grpo by default, or
        'weighted_sum')."""
        name = self.args.success_reward_func
        if not self.estimator.uses_success or name == "weighted_sum":
            return None
        if name is None:
            return 0 if self.estimator.binary else None  # binary: the only reward function, unweighted
        if name not in self.names and name in REWARD_FUNCS:  # a registry name, e.g. "accuracy"
            name = REWARD_FUNCS[name].__name__ if REWARD_FUNCS[name].__name__ in self.names else name
        if name not in self.names:
            raise ValueError(
                f"success_reward_func={self.args.success_reward_func!r} is not a reward function; have {self.names}"
            )
        return self.names.index(name)

    def rewards(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """The (N,) rewards the estimator sees: one function's raw score, or TRL's weighted sum (NaN if unscorable)."""
        if self.column is not None:
            rewards = rewards_per_func[:, self.column]
        else:
            weighted = (rewards_per_func * self.weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
            rewards = weighted.masked_fill(torch.isnan(rewards_per_func).all(dim=1), float("nan"))
        self._check_binary(rewards, rewards_per_func)
        return rewards

    def success(self, rewards: torch.Tensor) -> torch.Tensor:
        return rewards >= self.threshold  # NaN compares False

    def _check_binary(self, rewards, rewards_per_func):
        """An estimator of binary successes on rewards outside {0, 1}, with no success rule set: stop."""
        args = self.args
        if not self.estimator.binary or args.success_threshold is not None or args.success_reward_func is not None:
            return
        message = non_binary_rewards_message(rewards, rewards_per_func, self.names)
        if message:
            raise ValueError(
                f"advantage_estimator={self.estimator.name!r} needs binary successes, but {message}; at the "
                f"default success_threshold={self.threshold} most groups would be all-solved or all-failed and "
                "train nothing. Set success_threshold (a rollout succeeds when its reward >= it) and/or "
                "success_reward_func (the reward that decides success, or 'weighted_sum'), or use "
                "advantage_estimator='grpo' (TRL's GRPO on raw rewards) or 'dr_grpo'"
            )


class DegenerateWatch:
    """Warns when every advantage of ``DEGENERATE_BATCHES`` generation batches in a row is 0 (nothing trains), and at
    the first batch whose rewards are all unscorable (every reward function returned ``None``)."""

    def __init__(self, rule: SuccessRule):
        self.rule, self.in_a_row, self.warned_unscorable = rule, 0, False

    def update(self, advantages: torch.Tensor, rewards: torch.Tensor | None = None) -> None:
        """One generation batch's advantages and rewards; one host read (both flags at once)."""
        check_unscorable = rewards is not None and not self.warned_unscorable
        flags = [(advantages == 0).all()] + ([torch.isnan(rewards).all()] if check_unscorable else [])
        all_zero, *unscorable = torch.stack(flags).tolist()
        if unscorable and unscorable[0]:
            self.warned_unscorable = True
            warnings.warn(
                f"!!! every reward of this generation batch is None (unscorable; reward functions {self.rule.names}):"
                " the batch trains nothing. Check that the reward functions can score these completions !!!",
                stacklevel=3,
            )
        self.in_a_row = self.in_a_row + 1 if all_zero else 0
        if self.in_a_row == DEGENERATE_BATCHES:
            warnings.warn(
                f"!!! {DEGENERATE_BATCHES} generation batches in a row with every advantage 0: no gradient from the "
                "policy loss. Every group is degenerate (all rollouts succeed or all fail"
                f"{'' if self.rule.estimator.binary else ', or all rewards are equal'}): check the rewards against "
                f"success_threshold={self.rule.threshold} and success_reward_func, or the task's difficulty !!!",
                stacklevel=3,
            )
