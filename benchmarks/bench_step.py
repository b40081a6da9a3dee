"""Training-step time of AsymGRPOTrainer vs TRL's GRPOTrainer on the same tiny config, and where the time goes.

Targets (issue 28): AsymGRPO / TRL <= 1.03 with the diagnostics on, <= 1.01 with them off.

1. A warm-up trainer (discarded: the first trainer of a process pays one-time costs).
2. Rounds: TRL, AsymGRPO (diagnostics on) and AsymGRPO (diagnostics off), each training the same steps (same
   seed, model, data, reward), in an order that reverses every round (ABC, CBA, ...: drift and warm-up cancel).
   Per round, each trainer's median logged ``step_time`` (first step dropped); the ratios per round, their median
   and spread.
3. One more run of each with ``benchmarks/step_parts.py``: the median step by part (generation, rewards, TRL's
   scoring, AsymGRPO's rescoring, loss forward, backward, optimizer, the rest, the diagnostics' own share) and the
   host reads per step (device syncs on a GPU) by library. These runs are timed apart: the instruments cost time.
4. ``--sequence N``: N AsymGRPOTrainers one after another; each one's median step over the first's (a trainer that
   leaves state behind slows the next).

    python benchmarks/bench_step.py [--steps 20] [--rounds 4] [--hidden 64] [--tokens 16] [--sequence 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from trl import GRPOConfig, GRPOTrainer

from asym_trl import AsymGRPOConfig, AsymGRPOTrainer
from asym_trl.apps.tiny import build_tiny_model, cpu_run_kwargs, toy_sum_dataset, toy_sum_reward

sys.path.insert(0, str(Path(__file__).parent))
from step_parts import PARTS, HostReadsPerStep, StepParts, median_parts  # noqa: E402

KINDS = {  # name -> (trainer, config, extra config)
    "trl": (GRPOTrainer, GRPOConfig, {}),
    "asym": (AsymGRPOTrainer, AsymGRPOConfig, {}),
    "asym-nodiag": (AsymGRPOTrainer, AsymGRPOConfig, {"log_diagnostics": False}),
}


def build(kind: str, model_dir: str, out_dir: str, opts):
    trainer_cls, config_cls, extra = KINDS[kind]
    args = config_cls(
        **cpu_run_kwargs(),
        output_dir=out_dir,
        per_device_train_batch_size=16,
        num_generations=8,
        max_completion_length=opts.tokens,
        max_steps=opts.steps,
        **extra,
    )
    return trainer_cls(model_dir, reward_funcs=toy_sum_reward, args=args, train_dataset=toy_sum_dataset(512))


def step_times(trainer) -> list[float]:
    trainer.train()
    return [h["step_time"] for h in trainer.state.log_history if "step_time" in h][1:]


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f}, range {min(values):.3f}-{max(values):.3f}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--sequence", type=int, default=0, help="also: this many AsymGRPOTrainers in a row")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        heads = 4 if opts.hidden >= 128 else 2
        model_dir = str(build_tiny_model(f"{tmp}/model", hidden_size=opts.hidden, num_hidden_layers=4,
                                         num_attention_heads=heads))  # fmt: skip
        step_times(build("trl", model_dir, f"{tmp}/warm-up", opts))  # discarded
        times = {kind: [] for kind in KINDS}
        ratios = {kind: [] for kind in KINDS if kind != "trl"}
        for round_ in range(opts.rounds):
            order = list(KINDS) if round_ % 2 == 0 else list(reversed(KINDS))
            medians = {kind: statistics.median(step_times(build(kind, model_dir, f"{tmp}/{kind}", opts)))
                       for kind in order}  # fmt: skip
            for kind, median in medians.items():
                times[kind].append(median)
                if kind != "trl":
                    ratios[kind].append(median / medians["trl"])
        parts, reads = {}, {}
        for kind in KINDS:
            trainer = build(kind, model_dir, f"{tmp}/parts-{kind}", opts)
            timer, counter = StepParts(trainer), HostReadsPerStep(trainer)
            trainer.train()
            parts[kind] = median_parts(timer.history)
            reads[kind] = {lib: statistics.median(h.get(lib, 0) for h in counter.history[1:])
                           for lib in ("asym_trl", "trl", "transformers")}  # fmt: skip
        sequence = []
        for i in range(opts.sequence):
            sequence.append(statistics.median(step_times(build("asym", model_dir, f"{tmp}/seq{i}", opts))))

    print(f"{opts.rounds} rounds x {opts.steps} steps per trainer, hidden={opts.hidden}, completion tokens="
          f"{opts.tokens}, G=8, after a discarded warm-up trainer")  # fmt: skip
    for kind in KINDS:
        print(f"{kind:<12} median step per round (ms): " + ", ".join(f"{1000 * t:.1f}" for t in times[kind]))
    for kind, values in ratios.items():
        target = "1.03" if kind == "asym" else "1.01"
        print(f"ratio {kind} / trl per round: {', '.join(f'{r:.3f}' for r in values)}; {spread(values)} "
              f"(target <= {target})")  # fmt: skip
    print("\nmedian step by part (ms), timed apart (device synchronised at each boundary):")
    names = [*PARTS[:-1], "diagnostics", "step"]
    print(f"{'part':<14}" + "".join(f"{kind:>13}" for kind in KINDS))
    for part in names:
        print(f"{part:<14}" + "".join(f"{1000 * parts[kind][part]:13.2f}" for kind in KINDS))
    print("\nhost reads per step (each a device sync on a GPU), by library:")
    for kind in KINDS:
        print(f"{kind:<12} " + ", ".join(f"{lib} {n:g}" for lib, n in reads[kind].items()))
    if sequence:
        print("\nAsymGRPOTrainers in a row, median step (ms): " + ", ".join(f"{1000 * t:.1f}" for t in sequence))
        print("each over the first: " + ", ".join(f"{t / sequence[0]:.3f}" for t in sequence) + " (target <= 1.10)")


if __name__ == "__main__":
    main()
