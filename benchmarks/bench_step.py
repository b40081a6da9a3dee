"""Training-step time of AsymGRPOTrainer vs TRL's GRPOTrainer on the same tiny config; target ratio <= 1.02.

Both trainers run the same steps (same seed, model, data, reward) in alternating order (ABBA), several rounds;
the per-step times TRL logs (`step_time`, first step dropped) are compared by their medians, per round and overall.
AsymGRPOTrainer runs with its defaults, diagnostics on (their own cost: benchmarks/bench_diagnostics.py).

    python benchmarks/bench_step.py [--steps 20] [--rounds 6] [--hidden 64] [--tokens 16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from trl import GRPOConfig, GRPOTrainer

from asym_trl import AsymGRPOConfig, AsymGRPOTrainer
from asym_trl.apps.tiny import build_tiny_model, cpu_run_kwargs, toy_sum_dataset, toy_sum_reward


def step_times(trainer_cls, config_cls, model_dir, out_dir, opts, **extra) -> list[float]:
    args = config_cls(
        **cpu_run_kwargs(),
        output_dir=out_dir,
        per_device_train_batch_size=16,
        num_generations=8,
        max_completion_length=opts.tokens,
        max_steps=opts.steps,
        **extra,
    )
    trainer = trainer_cls(model_dir, reward_funcs=toy_sum_reward, args=args, train_dataset=toy_sum_dataset(512))
    trainer.train()
    return [h["step_time"] for h in trainer.state.log_history if "step_time" in h][1:]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=16)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(
            build_tiny_model(
                f"{tmp}/model",
                hidden_size=opts.hidden,
                num_hidden_layers=4,
                num_attention_heads=4 if opts.hidden >= 128 else 2,
            )
        )
        runs = {
            "trl": lambda: step_times(GRPOTrainer, GRPOConfig, model_dir, f"{tmp}/trl", opts),
            "asym": lambda: step_times(AsymGRPOTrainer, AsymGRPOConfig, model_dir, f"{tmp}/asym", opts),
        }
        times, ratios = {"trl": [], "asym": []}, []
        for round_ in range(opts.rounds):
            order = ("trl", "asym") if round_ % 2 == 0 else ("asym", "trl")  # ABBA: cancels drift and warm-up
            this = {name: runs[name]() for name in order}
            ratios.append(statistics.median(this["asym"]) / statistics.median(this["trl"]))
            for name in this:
                times[name] += this[name]
    trl, asym = statistics.median(times["trl"]), statistics.median(times["asym"])
    print(f"steps per trainer: {len(times['trl'])}, hidden={opts.hidden}, completion tokens={opts.tokens}, G=8")
    print(f"GRPOTrainer      median step {trl * 1000:8.1f} ms")
    print(f"AsymGRPOTrainer  median step {asym * 1000:8.1f} ms")
    print(f"per-round ratios asym / trl: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"ratio asym / trl (median of rounds): {statistics.median(ratios):.3f} (target <= 1.02)")


if __name__ == "__main__":
    main()
