"""The registry of advantage estimators: each name with its function and the metadata every consumer reads.

An estimator maps a ``(num_groups, G)`` tensor of rewards (``NaN`` = unscorable) to ``(num_groups, G)``
advantages (the conventions of :mod:`asym_trl.method.advantages`).  :func:`register_estimator` records, beside the
function, which config fields it reads and their defaults or fixed (preset) values.  One registry serves
:class:`asym_trl.AsymGRPOConfig` (validation, defaults, CLI choices), :class:`asym_trl.AsymGRPOTrainer` (the call),
``asym-trl train`` recipes and the model card (:mod:`asym_trl.launch.hub`).  It is public: register your own and name
it in a config or a recipe (``docs/estimators.md``)::

    @register_estimator("clipped_asym", params=("beta_pos", "beta_neg", "success_threshold"), defaults=...)
    def clipped_asym(rewards, *, beta_pos, beta_neg, success_threshold):
        ...

A recipe can also name an estimator by ``package.module:attribute`` (the registered object in that module): the
module is imported, which registers it, as for ``reward_funcs``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from .advantages import (
    BETA_PRESETS,
    SIGN_SCALE_PRESETS,
    agrae_advantages,
    asym_advantages,
    dr_grpo_advantages,
    ent_decrease_advantages,
    ent_increase_advantages,
    grpo_advantages,
    pass_at_k_advantages,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "ESTIMATOR_PARAMS",
    "Estimator",
    "compute_advantages",
    "estimator_names",
    "get_estimator",
    "register_estimator",
]

# The config fields an estimator may read (AsymGRPOConfig fields of the same name).
ESTIMATOR_PARAMS = (
    "beta_pos",
    "beta_neg",
    "scale_pos",
    "scale_neg",
    "success_threshold",
    "pass_at_k",
    "grpo_std",
    "scale_rewards",
    "agrae_alpha",
)
DEFAULT_SUCCESS_THRESHOLD = 1.0  # what success_threshold=None (unset) means
BETAS = ("beta_pos", "beta_neg")
SCALES = ("scale_pos", "scale_neg")  # the per-sign scales of Eq. 10 (1 = the paper's family)


@dataclass(frozen=True)
class Estimator:
    """A registered advantage estimator (see :func:`register_estimator`); calling it calls ``fn``."""

    name: str
    fn: Callable[..., torch.Tensor]
    params: tuple[str, ...] = ()
    defaults: dict[str, float] = field(default_factory=dict)
    fixed: dict[str, float] = field(default_factory=dict)
    uses_success: bool = True
    binary: bool = True
    min_group_size: int = 1
    description: str = ""
    context: tuple[str, ...] = ()
    adaptive: bool = False

    @property
    def uses_betas(self) -> bool:
        return any(name in self.params for name in BETAS)

    def __call__(self, rewards: torch.Tensor, context: dict | None = None, **params) -> torch.Tensor:
        """``fn(rewards, **params)`` with the parameters it reads (the others are ignored; missing: its defaults),
        plus the ``context`` values it declares that the caller has (e.g. the asynchronous trainer's batch accuracy
        for ``a_grae``, which sees one group at a time)."""
        kwargs = {name: params.get(name, self.defaults.get(name)) for name in self.params}
        kwargs |= {name: value for name, value in (context or {}).items() if name in self.context}
        return self.fn(rewards, **kwargs)


_REGISTRY: dict[str, Estimator] = {}
ADVANTAGE_ESTIMATORS = MappingProxyType(_REGISTRY)  # name -> Estimator, read-only view


def register_estimator(
    name: str,
    *,
    params: Sequence[str] = (),
    defaults: dict[str, float] | None = None,
    fixed: dict[str, float] | None = None,
    uses_success: bool = True,
    binary: bool = True,
    min_group_size: int = 1,
    description: str = "",
    context: Sequence[str] = (),
    adaptive: bool = False,
    fn: Callable[..., torch.Tensor] | None = None,
):
    """Register ``fn(rewards, **params) -> advantages`` under ``name``; usable as a decorator (returns the Estimator).

    Args:
        params: the config fields it reads, among :data:`ESTIMATOR_PARAMS`; it is called with exactly these as
            keywords.  A config that sets a beta it does not read is rejected.
        defaults: values of ``params`` used when the config leaves them unset (the betas default to ``None``).
        fixed: values a preset pins (the config accepts only these, or unset).
        uses_success: ``False`` for an estimator of raw reward values (``dr_grpo``): it works on TRL's weighted sum
            of the reward functions and ``success_reward_func`` does not apply.
        binary: ``True`` (the default) for an estimator of binary successes: rewards outside {0, 1} stop training
            at the first batch unless ``success_threshold`` or ``success_reward_func`` is set, and several reward
            functions need ``success_reward_func``.  ``False`` for one of raw reward values (``grpo``, ``dr_grpo``):
            by default it sees TRL's weighted sum.
        min_group_size: the smallest ``num_generations`` it is defined for.
        context: keywords of ``fn`` that are not config fields but facts of the batch a caller may know better than
            the rewards it passes (``"batch_accuracy"``: the batch's mean group success rate).
        adaptive: its betas are moved during training by :class:`asym_trl.method.adaptive.AdaptiveBeta` (the
            config's betas are the starting point); the trainers attach the controller.
    """
    unknown = set(params) - set(ESTIMATOR_PARAMS)
    if unknown:
        raise ValueError(f"estimator {name!r}: unknown params {sorted(unknown)}; choose from {list(ESTIMATOR_PARAMS)}")
    values = {**(defaults or {}), **(fixed or {})}
    if set(values) - set(params):
        raise ValueError(f"estimator {name!r}: defaults/fixed {sorted(set(values) - set(params))} are not in params")

    def register(func: Callable[..., torch.Tensor]) -> Estimator:
        estimator = Estimator(
            name=name,
            fn=func,
            params=tuple(params),
            defaults=values,
            fixed=dict(fixed or {}),
            uses_success=uses_success,
            binary=binary,
            min_group_size=min_group_size,
            description=description,
            context=tuple(context),
            adaptive=adaptive,
        )
        _REGISTRY[name] = estimator
        return estimator

    return register if fn is None else register(fn)


def get_estimator(name: str) -> Estimator:
    """The estimator registered as ``name``, or the one a ``package.module:attribute`` spec names (imported)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            found = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"advantage_estimator={name!r}: cannot import it ({e})") from e
        if not isinstance(found, Estimator):
            raise ValueError(f"advantage_estimator={name!r} is not a registered estimator (use @register_estimator)")
        return found
    raise ValueError(f"advantage_estimator={name!r} is unknown; choose one of {sorted(_REGISTRY)}")


class _EstimatorNames(Sequence):
    """The registered names, sorted, read at each use (so estimators registered later are valid CLI choices);
    a ``module:attribute`` spec is accepted too."""

    def __getitem__(self, index):
        return sorted(_REGISTRY)[index]

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __contains__(self, name) -> bool:
        return name in _REGISTRY or (isinstance(name, str) and ":" in name)


def estimator_names() -> Sequence[str]:
    """A live, sorted view of the registered names (argparse ``choices``)."""
    return _EstimatorNames()


# ------------------------------------------------------------------------------------------------ the paper's
_BETA_FAMILY = ("beta_pos", "beta_neg", "success_threshold")
_SCALED_FAMILY = (*BETAS, *SCALES, "success_threshold")  # Eq. 10 with a scale per sign


def _family_preset(betas: tuple[float, float], scales: tuple[float, float]) -> dict[str, float]:
    """The fixed values of a named member of the scaled Eq. 10 family."""
    return dict(zip(BETAS, betas, strict=True)) | dict(zip(SCALES, scales, strict=True))


register_estimator(
    "asym",
    params=_SCALED_FAMILY,
    defaults={"beta_pos": 0.9, "beta_neg": 0.4, **dict.fromkeys(SCALES, 1.0)},
    description="AsymGRPO, Eq. 10",
)(asym_advantages)
# grpo is registered below: for binary rewards the same advantages, for any other TRL's
_PRESETS = {name: (betas, (1.0, 1.0)) for name, betas in BETA_PRESETS.items() if name != "grpo"}
_PRESETS |= {name: ((0.0, 0.0), scales) for name, scales in SIGN_SCALE_PRESETS.items()}  # REINFORCE, scaled
for _preset, (_betas, _scales) in _PRESETS.items():  # the named members of the (scaled) Eq. 10 family
    _source = "Zhu et al. 2025" if _preset in SIGN_SCALE_PRESETS else "Eq. 10"
    register_estimator(
        _preset, params=_SCALED_FAMILY, fixed=_family_preset(_betas, _scales), description=f"{_source} preset"
    )(asym_advantages)
for _name, _fn, _curve in (
    ("ent_decrease", ent_decrease_advantages, "positive"),
    ("ent_increase", ent_increase_advantages, "negative"),
):
    register_estimator(
        _name,
        params=_BETA_FAMILY,
        defaults={"beta_pos": 0.5, "beta_neg": 0.5},
        min_group_size=2,
        description=f"flipped {_curve} curve, App. D",
    )(_fn)


@register_estimator(
    "grpo",
    params=("beta_pos", "beta_neg", "grpo_std", "scale_rewards"),
    defaults={"grpo_std": "population", "scale_rewards": "group"},
    fixed=dict(zip(BETAS, BETA_PRESETS["grpo"], strict=True)),
    binary=False,
    description="Eq. 4: TRL's GRPO on raw rewards; beta = 0.5 of Eq. 10 for binary ones",
)
def _grpo(rewards, *, beta_pos, beta_neg, grpo_std, scale_rewards):
    return grpo_advantages(rewards, grpo_std, scale_rewards)


@register_estimator("pass_at_k", params=("pass_at_k", "success_threshold"), description="Chen et al. 2025")
def _pass_at_k(rewards, *, pass_at_k, success_threshold):
    return pass_at_k_advantages(rewards, pass_at_k, success_threshold)


register_estimator("dr_grpo", uses_success=False, binary=False, description="r - mean(r), Liu et al. 2025")(
    dr_grpo_advantages
)
register_estimator(
    "a_grae",
    params=("success_threshold", "agrae_alpha"),
    defaults={"agrae_alpha": 1.0},
    context=("batch_accuracy",),
    description="A-GRAE, Yu et al. 2026 (arXiv 2602.05548)",
)(agrae_advantages)
register_estimator(
    "adaptive_beta",
    params=_SCALED_FAMILY,
    defaults={"beta_pos": 0.9, "beta_neg": 0.4, **dict.fromkeys(SCALES, 1.0)},
    adaptive=True,
    description="Eq. 10 with (beta_pos, beta_neg) moved towards a target training entropy",
)(asym_advantages)


def compute_advantages(
    rewards: torch.Tensor,
    num_generations: int,
    estimator: str = "asym",
    *,
    beta_pos: float | None = None,
    beta_neg: float | None = None,
    scale_pos: float | None = None,
    scale_neg: float | None = None,
    success_threshold: float = DEFAULT_SUCCESS_THRESHOLD,
    pass_at_k: int = 5,
    grpo_std: str = "population",
    scale_rewards: str = "group",
    agrae_alpha: float | None = None,
) -> torch.Tensor:
    """Flat ``(N,)`` rewards in TRL's order (each prompt's G rollouts consecutive) -> ``(N,)`` advantages.

    ``beta_pos``/``beta_neg`` and ``scale_pos``/``scale_neg`` default to the estimator's value (``asym``: the
    paper's 0.9/0.4 and 1/1; presets: theirs; flipped variants: 0.5/0.5).
    """
    if estimator not in estimator_names():
        raise ValueError(f"unknown advantage estimator {estimator!r}; choose one of {sorted(_REGISTRY)}")
    est = get_estimator(estimator)
    if rewards.dim() != 1 or rewards.numel() % num_generations:
        raise ValueError(
            f"rewards must be a flat tensor whose length is a multiple of num_generations={num_generations}, "
            f"got shape {tuple(rewards.shape)}"
        )
    given = dict(
        beta_pos=beta_pos,
        beta_neg=beta_neg,
        scale_pos=scale_pos,
        scale_neg=scale_neg,
        success_threshold=success_threshold,
        pass_at_k=pass_at_k,
        grpo_std=grpo_std,
        scale_rewards=scale_rewards,
        agrae_alpha=agrae_alpha,
    )
    params = {k: est.defaults.get(k) if v is None else v for k, v in given.items()}
    return est(rewards.view(-1, num_generations), **params).reshape(-1)
