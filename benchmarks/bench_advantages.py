"""Advantage estimators on 1M rollouts (G=8), wall time per call; target <= 20 ms on CPU (<= 1 ms on a GPU).

Also prints the ratio to TRL's own group-normalised GRPO advantages on the same rewards
(the same arithmetic TRL 1.16 runs inline: (r - mean) / (nanstd + 1e-4)). benchmarks/gpu_check.py runs it on CUDA.

    python benchmarks/bench_advantages.py [--rollouts 1000000] [--repeats 20] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch
from trl.trainer.utils import nanstd

from asym_trl.method.estimators import compute_advantages


def trl_grpo(rewards: torch.Tensor, G: int) -> torch.Tensor:
    grouped = rewards.view(-1, G)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    std = nanstd(grouped, dim=1).unsqueeze(1)
    return torch.nan_to_num((grouped - mean) / (std + 1e-4)).view(-1)


def best_ms(fn, repeats: int, device: torch.device) -> float:
    def wait():  # kernels run asynchronously on an accelerator
        if device.type != "cpu":
            torch.accelerator.synchronize(device)

    fn()  # warm-up
    times = []
    for _ in range(repeats):
        wait()
        t0 = time.perf_counter()
        fn()
        wait()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def run(rollouts: int = 1_000_000, repeats: int = 20, device: str = "cpu") -> dict[str, float]:
    """Best-of-``repeats`` milliseconds per call: TRL's GRPO advantages ("TRL grpo"), then each estimator."""
    G, device = 8, torch.device(device)
    torch.manual_seed(0)
    rewards = (torch.rand(rollouts) < 0.4).float()
    rewards[torch.rand(rollouts) < 0.01] = float("nan")  # some unscorable rollouts
    rewards = rewards.to(device)
    times = {"TRL grpo": best_ms(lambda: trl_grpo(rewards, G), repeats, device)}
    for name in ("asym", "reinforce", "grpo", "ent_decrease", "ent_increase", "pass_at_k", "dr_grpo", "a_grae"):
        times[name] = best_ms(lambda name=name: compute_advantages(rewards, G, name, pass_at_k=5), repeats, device)
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rollouts", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    opts = parser.parse_args()
    times = run(opts.rollouts, opts.repeats, opts.device)
    target = 20 if opts.device == "cpu" else 1
    print(f"device: {opts.device}, torch threads: {torch.get_num_threads()}, rollouts: {opts.rollouts}, G=8")
    print(f"{'estimator':<14}{'ms':>8}{'vs TRL grpo':>13}{f'<= {target} ms':>10}")
    for name, ms in times.items():
        ok = "" if name == "TRL grpo" else ("yes" if ms <= target else "NO")
        print(f"{name:<14}{ms:8.2f}{ms / times['TRL grpo']:13.2f}{ok:>10}")


if __name__ == "__main__":
    main()
