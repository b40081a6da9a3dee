"""Exploration metrics beyond token entropy: pass@k curves and distinct correct solutions (``docs/testbed.md``).

RLVR is known to raise pass@1 while narrowing pass@k at large k (Yue et al. 2025, "Does Reinforcement Learning
Really Incentivize Reasoning Capacity in LLMs Beyond the Base Model?"): the pass@k curve and the number of
*distinct* correct solutions are where keeping informative entropy should show.

- :func:`pass_at_k`: the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on
  Code", Eq. 1 and its numerically stable form): from ``n`` samples of which ``c`` are correct,
  ``1 - C(n-c, k) / C(n, k)``.
- :func:`distinct_correct`: the number of distinct correct solutions among samples, two being the same when a
  task's canonical form says so.
- :func:`exploration_report`: both curves plus accuracy, all-/none-solved shares and the token entropy on
  correct / incorrect samples of a policy on a held-out set (through
  :func:`asym_trl.task.evaluation.evaluate_benchmark`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..generation.backends import EvalSampling, Generator

__all__ = ["distinct_correct", "exploration_report", "mean_distinct_at_k", "mean_pass_at_k", "pass_at_k"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct: ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021),
    as their stable product ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``; needs ``0 <= c <= n`` and ``1 <= k <= n``."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def mean_pass_at_k(correct: Sequence[Sequence[bool]], ks: Sequence[int]) -> dict[int, float]:
    """``{k: mean over prompts of pass@k}`` from each prompt's per-sample correctness."""
    return {k: sum(pass_at_k(len(c), sum(c), k) for c in correct) / len(correct) for k in ks}


def distinct_correct(texts: Sequence[str], correct: Sequence[bool], canonical: Callable[[str], object]) -> int:
    """The number of distinct correct solutions among ``texts``: correct samples grouped by ``canonical(text)``."""
    return len({canonical(text) for text, ok in zip(texts, correct, strict=True) if ok})


def mean_distinct_at_k(
    texts: Sequence[Sequence[str]], correct: Sequence[Sequence[bool]], ks: Sequence[int], canonical: Callable
) -> dict[int, float]:
    """``{k: mean over prompts of the distinct correct solutions among the first k samples}`` (the samples are
    i.i.d., so the first k are a sample of size k)."""
    return {
        k: sum(distinct_correct(t[:k], c[:k], canonical) for t, c in zip(texts, correct, strict=True)) / len(texts)
        for k in ks
    }


def exploration_report(
    generate: Generator,
    dataset,
    *,
    n: int,
    ks: Sequence[int],
    sampling: EvalSampling,
    reward_func: Callable,
    canonical: Callable[[str], object],
) -> dict:
    """A policy on ``dataset`` (``prompt``/``solution``): ``n`` samples per prompt with ``sampling``, plus greedy.

    Returns ``greedy_accuracy``, ``sampled_accuracy``, ``all_solved`` / ``none_solved`` (shares of prompts with
    all / none of the ``n`` samples correct), ``entropy`` / ``entropy_correct`` / ``entropy_incorrect`` (mean token
    entropy over those samples; needs a generator returning :class:`~asym_trl.generation.backends.Completion`),
    ``pass_at_k`` and ``distinct_at_k`` (``{k: value}`` for ``k`` in ``ks``, ``k <= n``).
    """
    from ..task.evaluation import policy_report

    if max(ks) > n:
        raise ValueError(f"every k must be <= n={n}, got {max(ks)}")
    report, sampled = policy_report(generate, dataset, k=n, sampling=sampling, reward_func=reward_func)
    texts = [[str(s["completion"]) for s in sampled.samples[i * n : (i + 1) * n]] for i in range(len(dataset))]
    return {
        **report,
        "pass_at_k": mean_pass_at_k(sampled.correct, ks),
        "distinct_at_k": mean_distinct_at_k(texts, sampled.correct, ks, canonical),
    }
