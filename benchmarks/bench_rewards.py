"""Reward throughput (completions/s) on a realistic mix, 1 and 2 processes, against TRL's own accuracy_reward.

    PYTHONPATH=. python benchmarks/bench_rewards.py [--n 300] [--repeats 3]

The mix: MATH-style gold answers (integers, fractions, radicals, intervals, tuples, expressions); each completion is
~700 characters of reasoning with inline LaTeX, ending in a boxed answer that is an equivalent form (55%), a wrong
answer (35%) or missing (10%).  `trl.rewards.accuracy_reward` (math-verify in process, signal timeouts in the main
thread only, no bound elsewhere) is the baseline; ours adds extraction, pre-checks and a worker process per scoring
process (a hard time bound anywhere).  Worker start-up and parser warm-up are excluded from both timings.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import time

# gold -> (equivalent forms, wrong answers)
ANSWERS = {
    "42": (["42", "42.0", "x = 42"], ["41", "-42", "24"]),
    "\\frac{3}{4}": (["\\frac34", "0.75", "\\dfrac{3}{4}"], ["\\frac{4}{3}", "0.7", "3/5"]),
    "2\\sqrt{2}": (["\\sqrt{8}", "2\\sqrt2", "2 \\sqrt{2}"], ["\\sqrt{2}", "4", "2\\sqrt{3}"]),
    "(-1, 1)": (["(-1,1)", "\\left(-1, 1\\right)"], ["[-1, 1]", "(-1, 1]", "(0, 1)"]),
    "(3, -2)": (["(3,-2)", "\\left(3, -2\\right)"], ["(-2, 3)", "(3, 2)"]),
    "x^2 + 2x + 1": (["(x+1)^2", "x^2+2x+1"], ["x^2+1", "(x-1)^2"]),
    "\\frac{\\pi}{6}": (["\\pi/6", "\\frac{1}{6}\\pi"], ["\\frac{\\pi}{3}", "30"]),
    "1000": (["1000", "10^3", "1,000"], ["100", "999"]),
    "\\text{(B)}": (["\\text{(B)}", "(B)"], ["\\text{(C)}"]),
    "18\\%": (["18\\%", "18"], ["0.18\\%", "81"]),
}
FILLER = (
    "First we rewrite the expression as $a^2 - b^2 = (a-b)(a+b)$ and note that $a + b = 7$. "
    "Substituting, we get $7(a - b) = 21$, so $a - b = 3$. Checking the constraint $ab > 0$, "
    "both numbers are positive, and the quadratic $t^2 - 7t + 10 = 0$ has roots $t = 2$ and $t = 5$. "
)


def make_mix(n: int, seed: int = 0) -> tuple[list, list]:
    rng = random.Random(seed)
    completions, solutions = [], []
    golds = list(ANSWERS)
    for _ in range(n):
        gold = rng.choice(golds)
        right, wrong = ANSWERS[gold]
        roll = rng.random()
        reasoning = FILLER * rng.randint(2, 4)
        if roll < 0.55:
            text = f"{reasoning}Therefore the answer is $\\boxed{{{rng.choice(right)}}}$."
        elif roll < 0.90:
            text = f"{reasoning}Therefore the answer is $\\boxed{{{rng.choice(wrong)}}}$."
        else:
            text = f"{reasoning}So the answer must be {rng.choice(right)}."
        completions.append([{"role": "assistant", "content": text}])
        solutions.append(f"${gold}$")
    return completions, solutions


def _ours(args):
    from asym_trl.task.rewards import accuracy_reward

    completions, solutions = args
    accuracy_reward(completions[:2], solutions[:2])  # start this process's worker
    start = time.perf_counter()
    rewards = accuracy_reward(completions, solutions)
    return time.perf_counter() - start, rewards


def _trl(args):
    import logging

    logging.disable(logging.WARNING)
    from trl.rewards import accuracy_reward

    completions, solutions = args
    accuracy_reward(completions[:2], solutions[:2])  # parser warm-up
    start = time.perf_counter()
    rewards = accuracy_reward(completions, solutions)
    return time.perf_counter() - start, rewards


def throughput(fn, completions, solutions, processes: int) -> tuple[float, list]:
    """completions/s with ``processes`` processes each scoring an equal share (wall time of the slowest)."""
    shares = [(completions[i::processes], solutions[i::processes]) for i in range(processes)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        results = pool.map(fn, shares)
    seconds = max(r[0] for r in results)
    rewards = [None] * len(completions)
    for i, (_, share_rewards) in enumerate(results):
        rewards[i::processes] = share_rewards
    return len(completions) / seconds, rewards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best rate of each is kept")
    opts = parser.parse_args()
    completions, solutions = make_mix(opts.n)
    print(f"{opts.n} completions, mean {sum(len(c[0]['content']) for c in completions) / opts.n:.0f} characters")
    print(f"{'processes':>9} | {'TRL accuracy_reward':>19} | {'asym_trl accuracy':>17} | ratio (ours/TRL)")
    for processes in (1, 2):
        trl_rate = our_rate = 0.0
        for _ in range(opts.repeats):  # interleaved, best of: the machine is shared, noise only slows things down
            rate, trl_rewards = throughput(_trl, completions, solutions, processes)
            trl_rate = max(trl_rate, rate)
            rate, our_rewards = throughput(_ours, completions, solutions, processes)
            our_rate = max(our_rate, rate)
        print(f"{processes:>9} | {trl_rate:>13.1f} /s   | {our_rate:>11.1f} /s   | {our_rate / trl_rate:.2f}")
    agree = sum(a == b for a, b in zip(trl_rewards, our_rewards, strict=True)) / opts.n
    trl_mean, our_mean = (sum(r or 0 for r in rewards) / opts.n for rewards in (trl_rewards, our_rewards))
    print(f"mean reward: TRL {trl_mean:.3f}, ours {our_mean:.3f} (by construction 0.55 are right);", end=" ")
    print(f"verdicts agree on {100 * agree:.1f}% of completions")


if __name__ == "__main__":
    main()
