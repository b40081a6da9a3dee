"""The method's config fields and their checks (``AdvantageArgs``), shared by ``asym_trl.AsymGRPOConfig`` (which
documents them) and ``asym_trl.AsymAsyncGRPOConfig``: the estimator, its betas and scales, the success rule, and the
parameters of A-GRAE and of the adaptive beta controller."""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass, field

from .advantages import GRPO_STD
from .estimators import BETAS, DEFAULT_SUCCESS_THRESHOLD, SCALES, estimator_names, get_estimator

# what the adaptive_beta estimator's fields mean when unset (asym_trl.method.adaptive)
ADAPTIVE_DEFAULTS = {
    "adaptive_beta_target": 0.5,
    "adaptive_beta_target_entropy": None,
    "adaptive_beta_step": 0.05,
    "adaptive_beta_range": [0.0, 1.5],
}


@dataclass
class AdvantageArgs:
    """The advantage estimator's fields and checks, shared by [`AsymGRPOConfig`] (which documents them) and
    ``asym_trl.async_trainer.AsymAsyncGRPOConfig``. A mixin: the config also has ``num_generations`` and
    ``scale_rewards``."""

    advantage_estimator: str = field(
        default="asym",
        metadata={"help": "Advantage estimator.", "choices": estimator_names()},
    )
    beta_pos: float | None = field(default=None, metadata={"help": "Exponent on correct rollouts (Eq. 10)."})
    beta_neg: float | None = field(default=None, metadata={"help": "Exponent on incorrect rollouts (Eq. 10)."})
    scale_pos: float | None = field(default=None, metadata={"help": "Scale on correct rollouts (Eq. 10)."})
    scale_neg: float | None = field(default=None, metadata={"help": "Scale on incorrect rollouts (Eq. 10)."})
    success_threshold: float | None = field(
        default=None, metadata={"help": "A rollout succeeds when reward >= this (unset: 1.0)."}
    )
    success_reward_func: str | None = field(
        default=None,
        metadata={"help": "Reward function whose score decides success, or 'weighted_sum' (required with several)."},
    )
    pass_at_k: int = field(default=5, metadata={"help": "K of the pass_at_k estimator."})
    grpo_std: str = field(
        default="population",
        metadata={"help": "Std of the grpo estimator ('sample' = TRL's numbers).", "choices": list(GRPO_STD)},
    )
    agrae_alpha: float | None = field(
        default=None, metadata={"help": "a_grae: positive advantages x min(1, batch accuracy / alpha) (unset: 1)."}
    )
    adaptive_beta_target: float | None = field(
        default=None,
        metadata={"help": "adaptive_beta: target entropy as a fraction of the first step's (unset: 0.5)."},
    )
    adaptive_beta_target_entropy: float | None = field(
        default=None, metadata={"help": "adaptive_beta: an absolute target entropy, nats per token (instead)."}
    )
    adaptive_beta_step: float | None = field(
        default=None, metadata={"help": "adaptive_beta: largest move of either beta per optimizer step (unset: 0.05)."}
    )
    adaptive_beta_range: list[float] | None = field(
        default=None, metadata={"help": "adaptive_beta: [low, high] bounds of both betas (unset: [0, 1.5])."}
    )

    def _validate_advantage_args(self):
        est = get_estimator(self.advantage_estimator)  # ValueError naming the choices for an unknown one
        for name in BETAS + SCALES:
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value} is invalid: it must be a finite number >= 0")
            if name not in est.params:
                if value is not None:
                    raise ValueError(f"{name} is not used by advantage_estimator={est.name!r}; remove it")
                continue
            if name in est.fixed and value not in (None, est.fixed[name]):
                raise ValueError(
                    f"{name}={value} conflicts with advantage_estimator={est.name!r}, which fixes "
                    f"{name}={est.fixed[name]}; use advantage_estimator='asym' to set the betas and scales freely"
                )
            setattr(self, name, est.defaults.get(name) if value is None else float(value))
        if self.scale_pos == 0 and self.scale_neg == 0:
            raise ValueError("scale_pos = scale_neg = 0 makes every advantage 0: nothing would be learned")
        if not est.uses_success and self.success_reward_func is not None:
            raise ValueError(
                f"success_reward_func is not used by advantage_estimator={est.name!r} (it uses raw rewards)"
            )
        if self.success_threshold is not None and not math.isfinite(self.success_threshold):
            raise ValueError(f"success_threshold={self.success_threshold} must be a finite number")
        if self.grpo_std not in GRPO_STD:
            raise ValueError(f"grpo_std={self.grpo_std!r} is unknown; choose one of {list(GRPO_STD)}")
        self._validate_estimator_extras(est)

    def _validate_estimator_extras(self, est):
        """A-GRAE's alpha and the adaptive controller's fields: set only for the estimator that reads them."""
        extras = {"agrae_alpha": ("agrae_alpha" in est.params, est.defaults.get("agrae_alpha"))}
        extras |= {name: (est.adaptive, default) for name, default in ADAPTIVE_DEFAULTS.items()}
        for name, (used, default) in extras.items():
            value = getattr(self, name)
            if not used:
                if value is not None:
                    raise ValueError(f"{name} is not used by advantage_estimator={est.name!r}; remove it")
                continue
            setattr(self, name, default if value is None and name != "adaptive_beta_target_entropy" else value)
        for name in ("agrae_alpha", "adaptive_beta_target", "adaptive_beta_target_entropy", "adaptive_beta_step"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value} is invalid: it must be a finite number > 0")
        if self.adaptive_beta_range is not None:
            bounds = self.adaptive_beta_range = [float(x) for x in self.adaptive_beta_range]
            if len(bounds) != 2 or not (0 <= bounds[0] <= bounds[1] and math.isfinite(bounds[1])):
                raise ValueError(f"adaptive_beta_range={bounds} must be [low, high] with 0 <= low <= high")
            for name in BETAS:
                if not bounds[0] <= getattr(self, name) <= bounds[1]:
                    raise ValueError(f"{name}={getattr(self, name)} is outside adaptive_beta_range={bounds}")

    def _validate_group_size(self):
        """Checks of the estimator against the group size and ``scale_rewards``."""
        est = get_estimator(self.advantage_estimator)
        if "pass_at_k" in est.params and not (1 <= self.pass_at_k <= self.num_generations):
            raise ValueError(
                f"pass_at_k={self.pass_at_k} must satisfy 1 <= K <= num_generations={self.num_generations}"
            )
        for name in ("num_generations", "num_generations_eval"):
            g = getattr(self, name, None)  # the async config has no num_generations_eval
            if g is not None and g < est.min_group_size:
                raise ValueError(f"{name}={g}: {est.name} needs a group size >= {est.min_group_size}")
        if self.scale_rewards == "batch" and "scale_rewards" not in est.params:
            raise ValueError(
                f"scale_rewards='batch' normalises TRL's own advantages, which advantage_estimator={est.name!r} "
                "replaces; leave it at 'group' (or use advantage_estimator='grpo', which honours it)"
            )
        # An estimator that reads scale_rewards honours it; one on raw rewards (dr_grpo) is r - mean by definition.
        if self.scale_rewards == "none" and "scale_rewards" not in est.params and est.uses_success:
            raise ValueError(
                f"scale_rewards='none' is ignored by advantage_estimator={est.name!r}, which computes the advantages "
                "itself (its own scale); remove it, or use advantage_estimator='dr_grpo' for r - mean(r) without std"
            )

    @property
    def threshold(self) -> float:
        """The success threshold in effect (``success_threshold``, or 1.0 when unset)."""
        return DEFAULT_SUCCESS_THRESHOLD if self.success_threshold is None else self.success_threshold

    @property
    def estimator_params(self) -> dict:
        """The values of the fields the estimator reads (the registry's ``params``), with the threshold in effect."""
        values = {"success_threshold": self.threshold}
        return {name: values.get(name, getattr(self, name)) for name in get_estimator(self.advantage_estimator).params}

    def check_success_rule(self, num_reward_funcs: int):
        """With several reward functions (environment rewards included), an estimator of binary successes needs
        the rule named: accuracy + format summed and thresholded would count wrong boxed answers as successes."""
        binary = get_estimator(self.advantage_estimator).binary
        if num_reward_funcs > 1 and self.success_reward_func is None and binary:
            raise ValueError(
                f"{num_reward_funcs} reward functions: set success_reward_func to the one that decides success "
                "(e.g. 'accuracy'), or to 'weighted_sum' to threshold TRL's weighted sum at success_threshold"
            )


def promote_config(args, cls, trainer: str):
    """TRL's own config (``GRPOConfig``, ``AsyncGRPOConfig``) as ``cls``, its asym_trl subclass, for a TRL user who
    changes one line (the trainer's class): every value as TRL resolved it, the fields ``cls`` adds at their
    defaults (the paper's AsymGRPO: ``advantage_estimator="asym"``, (0.9, 0.4)), then ``cls``'s own checks
    (``validate_method``); one warning line says so."""
    promoted = copy.copy(args)  # TRL's __post_init__ has run: its values are kept, not resolved again
    promoted.__class__ = cls
    for f in dataclasses.fields(cls):
        if f.init and f.name not in vars(promoted):
            setattr(promoted, f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
    promoted.validate_method()
    warnings.warn(
        f"{trainer}: args is TRL's {type(args).__name__}; promoted to {cls.__name__} with the paper's defaults "
        f"(advantage_estimator={promoted.advantage_estimator!r}, beta_pos={promoted.beta_pos}, "
        f"beta_neg={promoted.beta_neg}); pass a {cls.__name__} to choose",
        stacklevel=3,
    )
    return promoted
