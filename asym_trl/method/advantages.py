"""Group-relative advantage estimators of the AsymGRPO paper, as pure torch functions.

Every estimator maps a ``(num_groups, G)`` tensor of rewards (``NaN`` = unscorable
rollout) to a ``(num_groups, G)`` tensor of rollout-level advantages, without a
Python loop over groups.  Conventions shared by all of them:

* **Success.** The paper's rewards are binary.  A rollout counts as a success when
  its reward is ``>= success_threshold`` (default 1.0, "full credit"); with partial
  credit or several summed reward functions, only rollouts at or above the threshold
  are successes.  ``dr_grpo`` is the one estimator that uses the raw reward values.
* **Unscorable rollouts** (``NaN`` reward) are left out of the group: they count in
  neither ``k`` nor ``n``, so the group accuracy is ``p = k / n`` over the scorable
  rollouts, and they get advantage 0 (as TRL does).  A group with no scorable
  rollout gets 0 everywhere.
* **Boundaries.** Nothing divides by zero: odds are computed from integer counts with
  a clamped denominator and the value on the side of a boundary that has no rollouts
  is masked away, never special-cased by value.  So REINFORCE (beta = 0) keeps +-1 in
  all-right and all-wrong groups (0**0 = 1), while any beta > 0 gives 0 there.

The registry that names them for configs, recipes and the trainer is :mod:`asym_trl.method.estimators`.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = [
    "BETA_PRESETS",
    "SIGN_SCALE_PRESETS",
    "agrae_advantages",
    "asym_advantages",
    "dr_grpo_advantages",
    "ent_decrease_advantages",
    "ent_increase_advantages",
    "entropy_shaped_advantages",
    "flipped_neg_curve",
    "flipped_pos_curve",
    "grpo_advantages",
    "pass_at_k_advantages",
    "scoped_entropy_term",
]

# (beta_pos, beta_neg) of the named members of the Eq. 10 family (paper §3.1, §4, App. E).
BETA_PRESETS: dict[str, tuple[float, float]] = {
    "reinforce": (0.0, 0.0),  # Eq. 5: +-1 regardless of p
    "grpo": (0.5, 0.5),  # Eq. 4/6 with the population std sqrt(p(1-p))
    "pos_only": (0.5, 0.0),  # §3.1 Pos-Only modulation
    "neg_only": (0.0, 0.5),  # §3.1 Neg-Only modulation
}
# (scale_pos, scale_neg) of the members at beta = (0, 0) that weight the two signs (Zhu et al. 2025, "The
# Surprising Effectiveness of Negative Reinforcement in LLM Reasoning"): REINFORCE's +-1 scaled per sign.
SIGN_SCALE_PRESETS: dict[str, tuple[float, float]] = {
    "psr": (1.0, 0.0),  # positive sample reinforcement: +1 / 0
    "nsr": (0.0, 1.0),  # negative sample reinforcement: 0 / -1
    "w_reinforce": (0.1, 1.0),  # weighted REINFORCE, lambda = 0.1 on positives: +0.1 / -1
}


def _group_counts(rewards: torch.Tensor, success_threshold: float):
    """Return (valid, success, k, n): masks and per-group success / scorable counts."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape (num_groups, G), got {tuple(rewards.shape)}")
    valid = ~torch.isnan(rewards)
    success = valid & (rewards >= success_threshold)
    k = success.sum(dim=1, keepdim=True).to(rewards.dtype)
    n = valid.sum(dim=1, keepdim=True).to(rewards.dtype)
    return valid, success, k, n


def _odds(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den where den > 0; where den == 0 the value is never used (no such rollouts)."""
    return num / den.clamp(min=1)


def asym_advantages(
    rewards: torch.Tensor,
    beta_pos: float,
    beta_neg: float,
    success_threshold: float = 1.0,
    scale_pos: float = 1.0,
    scale_neg: float = 1.0,
) -> torch.Tensor:
    """AsymGRPO, Eq. 10 (the beta-family of Eq. 7 with separate beta for each sign), with a scale per sign.

    Correct rollout: ``A = scale_pos * ((1-p)/p) ** beta_pos``; incorrect: ``A = -scale_neg * (p/(1-p)) ** beta_neg``,
    with ``p = k/n`` the in-group success rate.  ``(0.5, 0.5)`` is Eq. 4 with the population
    std, ``(0, 0)`` is REINFORCE's +-1 (Eq. 5); at ``(0, 0)`` the scales give PSR (1, 0), NSR (0, 1) and
    W-REINFORCE (0.1, 1) of Zhu et al. 2025.  A zero scale gives exactly 0 (never -0) on its side.
    """
    valid, success, k, n = _group_counts(rewards, success_threshold)
    a_pos = scale_pos * _odds(n - k, k).pow(beta_pos)  # scale * ((1-p)/p)^beta = scale * ((n-k)/k)^beta
    a_neg = (-scale_neg) * _odds(k, n - k).pow(beta_neg) + 0.0  # -scale * (p/(1-p))^beta; + 0.0: -0 -> 0
    adv = torch.where(success, a_pos, a_neg)
    return torch.where(valid, adv, torch.zeros_like(adv))


def flipped_pos_curve(p: torch.Tensor, beta: float, group_size: int) -> torch.Tensor:
    """EntDecrease positive curve, App. D Eq. 15 and 17.

    ``A~pos(p) = A_pos(1-p) = (p/(1-p))**beta`` for ``0 < p <= (G-1)/G``; on ``((G-1)/G, 1]``
    the line through ``A~pos((G-1)/G)`` and ``V = A~pos((G-1)/G) + [A~pos((G-1)/G) - A~pos((G-2)/G)]``.
    """
    g = float(group_size)
    a = (g - 1) / g

    def core(q):
        return (q / (1 - q).clamp(min=1 / g)).pow(beta)

    last, prev = core(p.new_tensor(a)), core(p.new_tensor((g - 2) / g))
    end = last + (last - prev)
    linear = last + (end - last) * (p - a) / (1 - a)
    return torch.where(p <= a, core(p.clamp(max=a)), linear)


def flipped_neg_curve(p: torch.Tensor, beta: float, group_size: int) -> torch.Tensor:
    """EntIncrease negative curve, App. D Eq. 16 and 18.

    ``A~neg(p) = A_neg(1-p) = -((1-p)/p)**beta`` for ``1/G <= p < 1``; on ``[0, 1/G)`` the line
    through ``V = A~neg(1/G) - [A~neg(2/G) - A~neg(1/G)]`` at 0 and ``A~neg(1/G)``.
    """
    g = float(group_size)
    b = 1 / g

    def core(q):
        return -((1 - q) / q.clamp(min=b)).pow(beta)

    first, second = core(p.new_tensor(b)), core(p.new_tensor(2 / g))
    start = first - (second - first)
    linear = start + (first - start) * p / b
    return torch.where(p >= b, core(p.clamp(min=b)), linear)


def _flipped(rewards, beta_pos, beta_neg, success_threshold, flip_pos: bool):
    valid, success, k, n = _group_counts(rewards, success_threshold)
    group_size = rewards.shape[1]
    p = k / n.clamp(min=1)
    if flip_pos:
        a_pos = flipped_pos_curve(p, beta_pos, group_size)
        a_neg = -_odds(k, n - k).pow(beta_neg)
    else:
        a_pos = _odds(n - k, k).pow(beta_pos)
        a_neg = flipped_neg_curve(p, beta_neg, group_size)
    adv = torch.where(success, a_pos, a_neg)
    return torch.where(valid, adv, torch.zeros_like(adv))


def ent_decrease_advantages(
    rewards: torch.Tensor, beta_pos: float = 0.5, beta_neg: float = 0.5, success_threshold: float = 1.0
) -> torch.Tensor:
    """EntDecrease (§3.2, App. D): positive curve flipped (Eq. 17), negative curve as Eq. 10.

    The boundary uses the nominal group size G (the tensor's width), so the extension is
    the paper's even when unscorable rollouts shrink a group.
    """
    return _flipped(rewards, beta_pos, beta_neg, success_threshold, flip_pos=True)


def ent_increase_advantages(
    rewards: torch.Tensor, beta_pos: float = 0.5, beta_neg: float = 0.5, success_threshold: float = 1.0
) -> torch.Tensor:
    """EntIncrease (§3.2, App. D): negative curve flipped (Eq. 18), positive curve as Eq. 10."""
    return _flipped(rewards, beta_pos, beta_neg, success_threshold, flip_pos=False)


def _log_comb(n: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """log C(n, r) for real tensors; -inf where r < 0 or r > n (C = 0)."""
    ok = (r >= 0) & (r <= n)
    n_, r_ = n.clamp(min=0), r.clamp(min=0)
    out = torch.lgamma(n_ + 1) - torch.lgamma(r_ + 1) - torch.lgamma((n_ - r_).clamp(min=0) + 1)
    return torch.where(ok, out, torch.full_like(out, -math.inf))


@functools.lru_cache(maxsize=64)
def _pass_at_k_table(size: int, k: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The closed form of :func:`pass_at_k_advantages` on the whole (N, c) grid of a group size (``size`` = G + 1
    values of each), flattened: ``(a_pos, a_neg)``, each ``(size * size,)``. Cached: a training run asks for the same
    grid at every step, and on a GPU its ~20 small kernels cost more than the per-rollout lookup."""
    grid_n = torch.arange(size, dtype=dtype, device=device).view(-1, 1)  # N, by row
    grid_c = grid_n.view(1, -1)  # c, by column (c > N is never looked up)
    kk = grid_n.clamp(max=k)
    rho = 1 - torch.exp(_log_comb(grid_n - grid_c, kk) - _log_comb(grid_n, kk))
    sigma = torch.sqrt((rho * (1 - rho)).clamp(min=0))
    has_signal = sigma > 1e-12
    safe_sigma = torch.where(has_signal, sigma, torch.ones_like(sigma))
    miss = torch.exp(_log_comb(grid_n - grid_c - 1, kk - 1) - _log_comb(grid_n - 1, kk - 1))
    a_pos = torch.where(has_signal, (1 - rho) / safe_sigma, 0.0).view(-1)
    a_neg = torch.where(has_signal, (1 - rho - miss) / safe_sigma, 0.0).view(-1)
    return a_pos, a_neg


def pass_at_k_advantages(rewards: torch.Tensor, k: int = 5, success_threshold: float = 1.0) -> torch.Tensor:
    """Pass@K training (Chen et al. 2025), analytic form for a group of N rollouts, c correct.

    ``rho = 1 - C(N-c, K)/C(N, K)`` (group pass@K), ``sigma = sqrt(rho(1-rho))``,
    ``A_pos = (1-rho)/sigma``, ``A_neg = (1 - rho - C(N-c-1, K-1)/C(N-1, K-1))/sigma``.
    Groups with sigma = 0 (no success, or every K-subset holds one) get 0.  N is the number of
    scorable rollouts; where N < K the group uses K = N.  The closed form is evaluated once on the
    (N, c) grid of the group size (cached) and looked up per group.
    """
    valid, success, c, n = _group_counts(rewards, success_threshold)
    size = rewards.shape[1] + 1
    a_pos, a_neg = _pass_at_k_table(size, int(k), rewards.dtype, rewards.device)
    cell = (n * size + c).long()  # (num_groups, 1) index into the flattened grid
    adv = torch.where(success, a_pos[cell], a_neg[cell])
    return torch.where(valid, adv, torch.zeros_like(adv))


def dr_grpo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025): ``A = r - mean(r)`` over the group's scorable rollouts, no std.

    Uses the raw reward values (partial credit included).  Pair it with
    ``loss_type="dr_grpo"`` for the constant loss normaliser.
    """
    valid = ~torch.isnan(rewards)
    mean = torch.nanmean(rewards, dim=1, keepdim=True).nan_to_num(0.0)
    adv = rewards - mean
    return torch.where(valid, adv, torch.zeros_like(adv))


GRPO_STD = ("population", "sample")
SCALE_REWARDS = ("group", "batch", "none")  # TRL's scale_rewards


def grpo_advantages(rewards: torch.Tensor, std: str = "population", scale_rewards: str = "group") -> torch.Tensor:
    """GRPO (Eq. 4) on the raw reward values, as TRL computes it: ``A = (r - mean_group(r)) / std``.

    ``std="population"``: the population std, and 0 where it is 0 -- for binary rewards exactly the
    beta = 0.5 member of Eq. 10.  ``std="sample"``: TRL's Bessel-corrected std + 1e-4 (TRL's numbers).
    ``scale_rewards`` as TRL means it: the std of the group, of the whole batch, or no division (Dr. GRPO).
    """
    if std not in GRPO_STD or scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"std={std!r} / scale_rewards={scale_rewards!r}: choose from {GRPO_STD} / {SCALE_REWARDS}")
    adv = dr_grpo_advantages(rewards)
    if scale_rewards == "none":
        return adv
    valid = ~torch.isnan(rewards)
    values = rewards if scale_rewards == "group" else rewards.reshape(1, -1)
    n = (~torch.isnan(values)).sum(dim=1, keepdim=True)
    sq = ((values - torch.nanmean(values, dim=1, keepdim=True)) ** 2).nan_to_num(0.0).sum(dim=1, keepdim=True)
    if std == "sample":
        sd = (sq / (n - 1).clamp(min=1)).sqrt().masked_fill(n < 2, 0.0)  # TRL's nanstd; 0 for a lone rollout
        adv = adv / (sd + 1e-4)
    else:
        sd = (sq / n.clamp(min=1)).sqrt()
        adv = torch.where(sd > 0, adv / sd.clamp(min=torch.finfo(sd.dtype).tiny), torch.zeros_like(adv))
    return torch.where(valid, adv, torch.zeros_like(adv))


AGRAE_EPS = 1e-6  # the fork's epsilon (std and square-root denominators)


def agrae_advantages(
    rewards: torch.Tensor,
    success_threshold: float = 1.0,
    agrae_alpha: float = 1.0,
    batch_accuracy: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """A-GRAE (Yu et al. 2026, arXiv 2602.05548; ``compute_grpo_outcome_advantage`` with ``grpo_weight=2.0`` in
    ``verl/trainer/ppo/core_algos.py`` of github.com/Yu7-code/A-GRAE): GRPO reweighted by group difficulty, the
    mixture set by the batch's accuracy, and positive advantages damped while the batch is weak.

    With ``r`` the success indicator, ``mu`` the group's success rate over its scorable rollouts, ``s`` their sample
    (Bessel) std, ``g = (r - mu) / (s + 1e-6)`` (GRPO) and ``m`` the batch accuracy (the mean of ``mu`` over the
    groups of two or more scorable rollouts, unless ``batch_accuracy`` is given)::

        A = (1 - m) * g / (2 (1 - sqrt(mu) + 1e-6))  +  m * g / (2 (sqrt(mu) + 1e-6))
        A = A * min(1, m / agrae_alpha)   where A > 0          (the fork: alpha = 1 for math)

    The first term weights easy groups (high ``mu``), the second hard ones; as the batch improves, the weight moves
    from easy to hard groups. All-solved and none-solved groups get 0 (``g = 0``), and so does a group with fewer
    than two scorable rollouts (the fork's rule for a lone rollout, ``mu = 0, s = 1``, would give it ``g / 1e-6``:
    its groups never have one). ``batch_accuracy``: the caller's batch when the tensor holds only part of it (the
    asynchronous trainer scores one group at a time).
    """
    valid, success, k, n = _group_counts(rewards, success_threshold)
    grouped = n >= 2
    mu = k / n.clamp(min=1)
    # binary r: sum over the group of (r - mu)^2 = k (1 - mu)^2 + (n - k) mu^2, so the std is per group
    std = ((k * (1 - mu) ** 2 + (n - k) * mu**2) / (n - 1).clamp(min=1)).sqrt()
    if batch_accuracy is None:  # mean of mu over the groups that have one, on the device (no host sync)
        batch_accuracy = (mu * grouped).sum() / grouped.sum().clamp(min=1)
    m = torch.as_tensor(batch_accuracy, dtype=rewards.dtype, device=rewards.device)
    root = mu.sqrt()
    # A = (r - mu) * scale, one scale per group and sign (computed on (num_groups, 1) tensors): positive advantages
    # are exactly the successes' (r - mu > 0), the only ones the batch-accuracy damping touches
    scale = ((1 - m) * 0.5 / (1 - root + AGRAE_EPS) + m * 0.5 / (root + AGRAE_EPS)) / (std + AGRAE_EPS)
    scale_pos = scale * torch.clamp(m / agrae_alpha, max=1.0)
    adv = (success.to(rewards.dtype) - mu) * torch.where(success, scale_pos, scale)
    return torch.where(valid & grouped, adv, torch.zeros_like(adv))


def scoped_entropy_term(
    entropies: torch.Tensor, mask: torch.Tensor, in_scope: torch.Tensor, accumulation_steps: int = 1
) -> torch.Tensor:
    """The entropy bonus restricted to some rollouts (``entropy_scope``): ``sum(H_t * in scope) / num_tokens``.

    ``entropies``/``mask`` are ``(B, T)``, ``in_scope`` is ``(B,)``. The denominator is every completion token of
    the micro-batch (as TRL's bonus), so a token in scope gets the same weight as under the unscoped bonus and
    out-of-scope tokens get none; divided by the gradient-accumulation steps in training, as TRL's own bonus.
    """
    scoped = mask * in_scope.unsqueeze(1).to(mask.dtype)
    return (entropies * scoped).sum() / mask.sum().clamp(min=1.0) / accumulation_steps


def entropy_shaped_advantages(
    advantages: torch.Tensor, entropies: torch.Tensor, alpha: float, kappa: float
) -> torch.Tensor:
    """Entropy advantage (Cheng et al. 2025): per token ``A'_t = A + min(alpha * H_t, |A| / kappa)``.

    ``advantages`` is ``(B,)``, ``entropies`` is ``(B, T)``; the entropy term is detached
    (it shapes the signal, it is not optimised), so the result is ``(B, T)``.
    """
    a = advantages.unsqueeze(1)
    bonus = torch.minimum(alpha * entropies.detach(), a.abs() / kappa)
    return a + bonus
