"""The README's main job: an offline CPU AsymGRPO run on an embedded default.

A tiny Qwen3 model is built locally (no Hub), then trained with AsymGRPO (beta_pos=0.9, beta_neg=0.4)
on the toy "last digit of a + b" task with a binary, verifiable reward.  Prints the mean reward of the
first and last steps and where the run was written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import AsymGRPOConfig
from .tiny import build_tiny_model, toy_sum_dataset, toy_sum_reward
from .trainer import AsymGRPOTrainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asym-trl quickstart", description=__doc__)
    parser.add_argument("--output-dir", default="runs/quickstart")
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--advantage-estimator", default="asym")
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args(argv)

    out = Path(opts.output_dir)
    model_dir = build_tiny_model(out / "tiny-model", seed=opts.seed)
    args = AsymGRPOConfig(
        output_dir=str(out / "grpo"),
        advantage_estimator=opts.advantage_estimator,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        learning_rate=3e-4,
        per_device_train_batch_size=32,
        num_generations=8,
        max_completion_length=8,
        max_steps=opts.max_steps,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        seed=opts.seed,
    )
    trainer = AsymGRPOTrainer(
        model=str(model_dir), reward_funcs=toy_sum_reward, args=args, train_dataset=toy_sum_dataset(2048, opts.seed)
    )
    trainer.train()
    trainer.save_model()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    print(f"mean reward: first logged step {rewards[0]:.3f} -> last logged step {rewards[-1]:.3f}")
    print(f"model and trainer state written to {args.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
