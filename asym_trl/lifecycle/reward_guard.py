"""Reward functions checked and, for flaky external graders, allowed to fail (``reward_failure_policy``).

``AsymGRPOTrainer`` wraps every reward function that is a plain callable in a :class:`GuardedReward` (same name, so
TRL's metric names and ``success_reward_func`` are unchanged):

- values that are not numbers or ``None`` stop the run with :class:`RewardValueError`, naming the function and the
  value (instead of a tensor error about ``'str'`` deep inside TRL);
- an exception raised by the function becomes :class:`RewardFunctionError`, naming the function, with
  ``reward_failure_policy="raise"`` (the default);
- with ``"unscorable"`` the batch is scored again one completion at a time; a completion whose call still fails gets
  ``None`` (unscorable: left out of p, advantage 0), the failed share is logged as ``reward_failures/<name>``, and
  more than ``max_reward_failure_fraction`` of the batch failing stops the run.
"""

from __future__ import annotations

import numbers

import torch

from ..errors import UsageError

__all__ = ["GuardedReward", "RewardFunctionError", "RewardValueError", "check_reward_values", "guard_reward_funcs"]


class RewardFunctionError(RuntimeError):
    """A reward function raised (or failed on too many completions under ``reward_failure_policy="unscorable"``)."""


class RewardValueError(UsageError):
    """A reward function returned something other than one number (or None) per completion."""


def check_reward_values(name: str, values) -> list:
    """``values`` as a list, each a real number or None; else :class:`RewardValueError` naming ``name``."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise RewardValueError(
            f"reward function {name!r} returned {type(values).__name__} {values!r:.60}, not a list with one number "
            "(or None: unscorable) per completion"
        )
    values = list(values)
    for value in values:
        number = isinstance(value, numbers.Real) or (isinstance(value, torch.Tensor) and value.numel() == 1)
        if value is not None and not number:
            raise RewardValueError(
                f"reward function {name!r} returned a {type(value).__name__} reward ({value!r:.60}); a reward "
                "function returns one number (or None: unscorable) per completion"
            )
    return values


def _one_completion(kwargs: dict, i: int, n: int) -> dict:
    """The keyword arguments of completion ``i`` alone: every per-completion list sliced, the rest as it is."""
    return {k: v[i : i + 1] if isinstance(v, list) and len(v) == n else v for k, v in kwargs.items()}


class GuardedReward:
    """``func`` with its values checked and its failures handled by ``policy`` (see the module docstring)."""

    def __init__(self, func, policy: str = "raise", max_failure_fraction: float = 0.1):
        self.func, self.policy, self.max_failure_fraction = func, policy, max_failure_fraction
        self.__name__ = getattr(func, "__name__", type(func).__name__)

    def __call__(self, **kwargs) -> list:
        try:
            values = self.func(**kwargs)
        except Exception as error:
            return self._after_failure(error, kwargs)
        self._log_failures(kwargs, 0)
        return check_reward_values(self.__name__, values)

    def _after_failure(self, error: Exception, kwargs: dict) -> list:
        """``policy="raise"``: a :class:`RewardFunctionError`; ``"unscorable"``: each completion scored alone."""
        if self.policy == "raise":
            raise RewardFunctionError(
                f"reward function {self.__name__!r} raised {type(error).__name__}: {error}"
            ) from error
        n = len(kwargs["completions"])
        values, failed = [], 0
        for i in range(n):
            try:
                values += check_reward_values(self.__name__, self.func(**_one_completion(kwargs, i, n)))[:1]
            except RewardValueError:
                raise
            except Exception:
                values.append(None)
                failed += 1
        self._log_failures(kwargs, failed / max(n, 1))
        if failed > self.max_failure_fraction * n:
            raise RewardFunctionError(
                f"reward function {self.__name__!r} failed on {failed} of {n} completions, more than "
                f"max_reward_failure_fraction={self.max_failure_fraction:g} (first error: {type(error).__name__}: "
                f"{error})"
            ) from error
        return values

    def _log_failures(self, kwargs: dict, fraction: float) -> None:
        if self.policy == "unscorable" and callable(kwargs.get("log_metric")):
            kwargs["log_metric"](f"reward_failures/{self.__name__}", fraction)


def guard_reward_funcs(reward_funcs, policy: str = "raise", max_failure_fraction: float = 0.1):
    """``reward_funcs`` (one or a list, as TRL takes them) with every plain synchronous callable guarded.

    Reward models (``nn.Module``), Hub ids (``str``) and async reward functions are left to TRL as they are."""
    from trl.trainer.utils import is_async_callable

    def guard(func):
        if isinstance(func, (str, torch.nn.Module, GuardedReward)) or not callable(func) or is_async_callable(func):
            return func
        return GuardedReward(func, policy, max_failure_fraction)

    if isinstance(reward_funcs, list):
        return [guard(f) for f in reward_funcs]
    return None if reward_funcs is None else guard(reward_funcs)
