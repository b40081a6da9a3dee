"""The paper's entropy-refinement measurements (§2.2, §3.1, App. B) as pure, vectorised torch functions.

Everything here is a function of tensors, with no trainer state and no communication, so each one is
checked against hand-computed values.  :class:`asym_trl.AsymGRPOTrainer` calls them on the globally
gathered rewards (generation time) and on sums it reduces across processes (loss time); see
``docs/diagnostics.md`` for the logged metric names.

Conventions (those of :mod:`asym_trl.method.advantages`):

* a group is one prompt's ``G`` rollouts; ``success`` marks rollouts at or above the success threshold and
  ``valid`` the scorable ones (reward not ``NaN``);
* the group accuracy is ``p = k / n`` over the scorable rollouts (``k`` successes, ``n`` scorable); a group
  with ``n = 0`` has no accuracy and is left out of every group statistic;
* the accuracy *level* of a group is ``round(G * p)`` in ``0..G`` (= ``k`` when every rollout is scorable),
  the ``p = k/G`` grid of the paper's Fig. 1(c);
* "correct" rollouts are the successes; "incorrect" ones are scorable non-successes.

Functions that feed cross-process reductions return ``(sum, count)`` pairs rather than means, so that
means over several micro-batches and processes are exact: :func:`ratio` turns them into means (``NaN``
where the count is 0; TRL's ``log`` skips ``NaN`` values).
"""

from __future__ import annotations

import torch

__all__ = [
    "accuracy_histogram",
    "accuracy_levels",
    "ADVANTAGE_STATS",
    "advantage_means",
    "advantage_stats",
    "covariance_level_sums",
    "group_counts",
    "group_covariance",
    "length_normalized_logps",
    "likelihood_displacement_sums",
    "ratio",
    "rollout_step",
    "rollouts_of_step",
    "rollout_steps_done",
    "solve_counts",
    "split_token_sums",
]


def _check_grouped(name: str, x: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (num_groups, G), got {tuple(x.shape)}")


def rollout_step(global_step: int, gradient_accumulation_steps: int, steps_per_generation: int, num_iterations: int):
    """The paper's training step (a verl rollout step: one generation batch and all its updates) that contains
    TRL optimizer step ``global_step`` (0-based): TRL generates every ``steps_per_generation x num_iterations``
    micro-steps, and an optimizer step is ``gradient_accumulation_steps`` micro-steps."""
    return global_step * gradient_accumulation_steps // (steps_per_generation * num_iterations)


def rollout_steps_done(
    global_step: int, gradient_accumulation_steps: int, steps_per_generation: int, num_iterations: int
):
    """Rollout steps (the paper's training steps, the x-axis of its Figs. 2-4) completed after ``global_step``
    optimizer steps: ``global_step x gradient_accumulation_steps / (steps_per_generation x num_iterations)``,
    fractional inside a rollout step (:func:`rollout_step` of optimizer step ``s`` is the floor of this at ``s``)."""
    return global_step * gradient_accumulation_steps / (steps_per_generation * num_iterations)


def rollouts_of_step(step: int, accumulation: int, steps_per_generation: int, num_iterations: int) -> list[int]:
    """The rollout steps (as the diagnostics number them) of the generation batches that optimizer step ``step``
    reads: the one in use at its first micro-step and any generated during it."""
    every = steps_per_generation * num_iterations
    first = step * accumulation // every * every
    return [
        rollout_step(m // accumulation, accumulation, steps_per_generation, num_iterations)
        for m in range(first, (step + 1) * accumulation, every)
    ]


def ratio(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``sums / counts`` elementwise, ``NaN`` where ``counts == 0``."""
    if sums.shape != counts.shape:
        raise ValueError(f"sums {tuple(sums.shape)} and counts {tuple(counts.shape)} must have the same shape")
    counts = counts.to(sums.dtype)
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))


def group_counts(success: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group: ``k`` successes and ``n`` scorable rollouts (both ``(num_groups,)``, long)."""
    _check_grouped("success", success)
    if valid.shape != success.shape:
        raise ValueError(f"valid {tuple(valid.shape)} must have the shape of success {tuple(success.shape)}")
    valid = valid.bool()
    return (success.bool() & valid).sum(dim=1), valid.sum(dim=1)


def accuracy_levels(k: torch.Tensor, n: torch.Tensor, group_size: int, check: bool = True) -> torch.Tensor:
    """Accuracy level ``round(G * k / n)`` of each group in ``0..G``; ``-1`` for a group with ``n = 0``.

    ``check=False`` skips the input check, which reads the device (the trainer's counts are valid by construction).
    """
    if group_size < 1:
        raise ValueError(f"group_size={group_size} must be >= 1")
    if check and (bool((k > n).any()) or bool((n > group_size).any())):
        raise ValueError(f"need k <= n <= group_size={group_size} in every group")
    level = torch.round(group_size * k.double() / n.clamp(min=1).double()).long()
    return torch.where(n > 0, level, torch.full_like(level, -1))


def solve_counts(k: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """``[all-solved, none-solved, scorable]`` group counts (long): ``p = 1``, ``p = 0``, ``n > 0``.

    The paper's group composition (§3.1, Fig. 2 c,g); the shares are the first two over the third
    (:func:`ratio`), which adds up exactly over steps (epoch-wise shares).
    """
    if k.shape != n.shape:
        raise ValueError(f"k {tuple(k.shape)} and n {tuple(n.shape)} must have the same shape")
    scored = n > 0
    return torch.stack([(scored & (k == n)).sum(), (scored & (k == 0)).sum(), scored.sum()])


def accuracy_histogram(levels: torch.Tensor, group_size: int, check: bool = True) -> torch.Tensor:
    """Share of the scorable groups at each accuracy level ``p = j/G``, ``j = 0..G`` (a ``(G+1,)`` tensor).

    Levels are those of :func:`accuracy_levels`; groups at level ``-1`` (nothing scorable) are left out, and
    the shares sum to 1 unless no group is scorable (then all ``NaN``). Computed without reading the device
    (``check=False`` also skips the range check).
    """
    if check and bool(((levels < -1) | (levels > group_size)).any()):
        raise ValueError(f"levels must lie in -1..{group_size}, got max {int(levels.max())}")
    bins = torch.zeros(group_size + 2, dtype=torch.float64, device=levels.device)  # bin 0: level -1
    counts = bins.scatter_add_(0, levels.reshape(-1) + 1, torch.ones_like(levels.reshape(-1), dtype=bins.dtype))[1:]
    return ratio(counts, counts.sum().expand_as(counts))


ADVANTAGE_STATS = ("correct_mean", "correct_abs_mean", "incorrect_mean", "incorrect_abs_mean")


def advantage_means(advantages: torch.Tensor, success: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean advantage and mean ``|advantage|`` on correct and on incorrect (scorable) rollouts, a ``(4,)`` tensor in
    the order of :data:`ADVANTAGE_STATS`, on the device.

    The quantities the reweighting of §2.2 (Fig. 1 a,b) acts on.  Any shape, as long as the three match;
    a mean over no rollouts is ``NaN``.
    """
    if not (advantages.shape == success.shape == valid.shape):
        raise ValueError(
            f"advantages {tuple(advantages.shape)}, success {tuple(success.shape)} and valid {tuple(valid.shape)} "
            "must have the same shape"
        )
    adv = advantages.double()
    means = []
    for sel in (success.bool() & valid.bool(), ~success.bool() & valid.bool()):
        count = sel.sum()
        means += [ratio((adv * sel).sum(), count), ratio((adv.abs() * sel).sum(), count)]
    return torch.stack(means)


def advantage_stats(advantages: torch.Tensor, success: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """:func:`advantage_means` as ``{name: float}``."""
    return dict(zip(ADVANTAGE_STATS, advantage_means(advantages, success, valid).tolist(), strict=True))


def split_token_sums(
    values: torch.Tensor, mask: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor
) -> torch.Tensor:
    """``[sum, count]`` of per-token ``values`` over the masked tokens of correct, then incorrect rollouts.

    ``values`` and ``mask`` are ``(B, T)``; ``correct`` / ``incorrect`` are ``(B,)`` masks.  Returns a float
    tensor ``[sum_correct, tokens_correct, sum_incorrect, tokens_incorrect]``, to be summed over micro-batches
    and processes before :func:`ratio` (token entropy on correct vs incorrect rollouts: the paper's
    informative vs spurious entropy, §3.1).
    """
    if values.shape != mask.shape or values.dim() != 2:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} must both be (B, T)")
    if correct.shape != (values.shape[0],) or incorrect.shape != (values.shape[0],):
        raise ValueError(f"correct and incorrect must have shape ({values.shape[0]},)")
    mask = mask.to(values.dtype)
    per_row = torch.stack([(values.detach() * mask).sum(dim=1), mask.sum(dim=1)])  # (2, B): token sums and counts
    selected = torch.stack([correct, incorrect]).to(values.dtype)  # (2, B)
    return (selected @ per_row.T).reshape(-1).float()  # [sum_c, tokens_c, sum_i, tokens_i]


def length_normalized_logps(per_token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 12: ``log pi_bar(y|x) = (1/|y|) sum_t log pi(y_t | x, y_<t)`` over the masked tokens, ``(B,)``.

    ``NaN`` for a rollout with no masked token.
    """
    if per_token_logps.shape != mask.shape or mask.dim() != 2:
        raise ValueError(f"per_token_logps {tuple(per_token_logps.shape)} and mask {tuple(mask.shape)} must be (B, T)")
    mask = mask.to(per_token_logps.dtype)
    return ratio((per_token_logps * mask).sum(dim=1), mask.sum(dim=1))


def group_covariance(norm_logps: torch.Tensor, advantages: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 13: per group, ``(1/G) sum_i (log pi_bar(y_i) - mu_pi)(A_i - mu_A)``, shape ``(num_groups,)``.

    Inputs are ``(num_groups, G)``.  Unscorable rollouts (``valid`` False) are left out, so ``G`` and the
    means run over the ``n`` scorable ones (the population covariance, as in the paper); ``NaN`` when
    ``n = 0``.
    """
    for name, x in (("norm_logps", norm_logps), ("advantages", advantages), ("valid", valid)):
        _check_grouped(name, x)
    if not (norm_logps.shape == advantages.shape == valid.shape):
        raise ValueError("norm_logps, advantages and valid must have the same shape")
    w = valid.to(torch.float64)
    n = w.sum(dim=1)
    x = torch.where(valid.bool(), norm_logps.double(), 0.0)
    a = torch.where(valid.bool(), advantages.double(), 0.0)
    mu_x = ratio(x.sum(dim=1), n).unsqueeze(1)
    mu_a = ratio(a.sum(dim=1), n).unsqueeze(1)
    return ratio(((x - mu_x) * (a - mu_a) * w).nansum(dim=1), n)


def covariance_level_sums(
    covariances: torch.Tensor, levels: torch.Tensor, group_size: int, check: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator and denominator of Eq. 14, ``Cov(p) = (1/|D_p|) sum_{g in D_p} Cov_group(g)``.

    ``covariances`` and ``levels`` are ``(num_groups,)``; returns ``(sums, counts)``, both ``(G+1,)`` float64,
    indexed by level ``j`` (``p = j/G``).  Groups with level ``-1`` or a ``NaN`` covariance are left out.
    Summing these over steps and dividing (:func:`ratio`) gives Cov(p) over a window of steps (App. B: the
    first 40).  Levels 0 and G always give 0: every rollout of such a group has the same advantage.
    ``check=False`` skips the range check of ``levels`` (a host read).
    """
    if covariances.shape != levels.shape or covariances.dim() != 1:
        raise ValueError(
            f"covariances {tuple(covariances.shape)} and levels {tuple(levels.shape)} must both be (num_groups,)"
        )
    if check and bool((levels > group_size).any()):
        raise ValueError(f"levels must lie in -1..{group_size}")
    keep = (levels >= 0) & ~torch.isnan(covariances)
    bins = torch.where(keep, levels + 1, 0)  # bin 0 collects the groups left out; no host read
    sums = torch.zeros(group_size + 2, dtype=torch.float64, device=covariances.device)
    sums.index_add_(0, bins, torch.where(keep, covariances.double(), 0.0))
    counts = torch.zeros_like(sums).index_add_(0, bins, keep.double())
    return sums[1:], counts[1:]


def likelihood_displacement_sums(
    new_logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor, correct: torch.Tensor
) -> torch.Tensor:
    """Sums for ``E[log pi_new(y) - log pi_old(y)]`` over correct rollouts (§3.1, Lazy Likelihood Displacement).

    ``log pi(y) = sum_t log pi(y_t | x, y_<t)`` over the masked completion tokens; ``new_logps`` are taken
    after an optimizer update, ``old_logps`` before it (``(B, T)``).  Returns ``[sum of the deltas over the
    correct rollouts' tokens, number of correct rollouts, number of their tokens]``: the total over the
    rollout count is the paper's per-rollout increment, over the token count the same per token.
    """
    if not (new_logps.shape == old_logps.shape == mask.shape) or mask.dim() != 2:
        raise ValueError("new_logps, old_logps and mask must all be (B, T)")
    if correct.shape != (mask.shape[0],):
        raise ValueError(f"correct must have shape ({mask.shape[0]},), got {tuple(correct.shape)}")
    m = mask.double() * correct.double().unsqueeze(1)
    total = ((new_logps.double() - old_logps.double()) * m).sum()
    return torch.stack([total, correct.double().sum(), m.sum()]).float()
