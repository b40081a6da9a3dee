"""Advantage estimators on 1M rollouts (G=8), CPU wall time per call; target <= 20 ms.

Also prints the ratio to TRL's own group-normalised GRPO advantages on the same rewards
(the same arithmetic TRL 1.16 runs inline: (r - mean) / (nanstd + 1e-4)).

    python benchmarks/bench_advantages.py [--rollouts 1000000] [--repeats 20]
"""

from __future__ import annotations

import argparse
import time

import torch
from trl.trainer.utils import nanstd

from asym_trl.estimators import compute_advantages


def trl_grpo(rewards: torch.Tensor, G: int) -> torch.Tensor:
    grouped = rewards.view(-1, G)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    std = nanstd(grouped, dim=1).unsqueeze(1)
    return torch.nan_to_num((grouped - mean) / (std + 1e-4)).view(-1)


def best_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rollouts", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=20)
    opts = parser.parse_args()
    G = 8
    torch.manual_seed(0)
    rewards = (torch.rand(opts.rollouts) < 0.4).float()
    rewards[torch.rand(opts.rollouts) < 0.01] = float("nan")  # some unscorable rollouts
    base = best_ms(lambda: trl_grpo(rewards, G), opts.repeats)
    print(f"torch threads: {torch.get_num_threads()}, rollouts: {opts.rollouts}, G={G}")
    print(f"{'estimator':<14}{'ms':>8}{'vs TRL grpo':>13}{'<= 20 ms':>10}")
    print(f"{'TRL grpo':<14}{base:8.2f}{1.0:13.2f}{'':>10}")
    kwargs = {"pass_at_k": 5}
    for name in ("asym", "reinforce", "grpo", "ent_decrease", "ent_increase", "pass_at_k", "dr_grpo"):
        ms = best_ms(lambda name=name: compute_advantages(rewards, G, name, **kwargs), opts.repeats)
        print(f"{name:<14}{ms:8.2f}{ms / base:13.2f}{'yes' if ms <= 20 else 'NO':>10}")


if __name__ == "__main__":
    main()
