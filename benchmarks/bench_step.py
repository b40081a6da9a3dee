"""Training-step time of AsymGRPOTrainer vs TRL's GRPOTrainer on the same tiny config; target ratio <= 1.02.

Both trainers run the same steps (same seed, model, data, reward) in alternation, several rounds, and the
per-step times TRL logs (`step_time`, first step dropped) are compared by their medians.

    python benchmarks/bench_step.py [--steps 20] [--rounds 3] [--hidden 64] [--tokens 16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from trl import GRPOConfig, GRPOTrainer

from asym_trl import AsymGRPOConfig, AsymGRPOTrainer
from asym_trl.tiny import build_tiny_model, cpu_run_kwargs, toy_sum_dataset, toy_sum_reward


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
    parser.add_argument("--rounds", type=int, default=3)
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
        times = {"trl": [], "asym": []}
        for _ in range(opts.rounds):
            times["trl"] += step_times(GRPOTrainer, GRPOConfig, model_dir, f"{tmp}/trl", opts)
            times["asym"] += step_times(AsymGRPOTrainer, AsymGRPOConfig, model_dir, f"{tmp}/asym", opts)
    trl, asym = statistics.median(times["trl"]), statistics.median(times["asym"])
    print(f"steps per trainer: {len(times['trl'])}, hidden={opts.hidden}, completion tokens={opts.tokens}, G=8")
    print(f"GRPOTrainer      median step {trl * 1000:8.1f} ms")
    print(f"AsymGRPOTrainer  median step {asym * 1000:8.1f} ms")
    print(f"ratio asym / trl: {asym / trl:.3f} (target <= 1.02)")


if __name__ == "__main__":
    main()
