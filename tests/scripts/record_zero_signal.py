"""Train 2 AsymGRPO steps (plain SGD) with or without the zero-signal skip and save the gradients (rank 0).

Launched by tests/test_zero_signal.py with 2 processes (torchrun, gloo on CPU): process 1 holds only all-solved
groups, so each of its micro-batches is skipped entirely while process 0's are not.
With MODE "ds" it runs dynamic sampling instead (capped at 3 generations; process 1's groups never fill).
Usage: record_zero_signal.py OUT_DIR MODEL_DIR MODE(0|1|ds)
"""

import json
import os
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import TrainerCallback

from asym_trl import AsymGRPOConfig, AsymGRPOTrainer
from asym_trl.apps.tiny import cpu_run_kwargs, toy_sum_dataset

G = 4


class GradientSum(TrainerCallback):
    """The gradients the optimizer steps on (synced, clipped), summed over the optimizer steps."""

    def __init__(self):
        self.sums = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        for name, param in model.named_parameters():
            if param.grad is not None:
                self.sums[name] = self.sums.get(name, 0.0) + param.grad.detach().clone()


def rank_reward(completions, **kwargs):
    """Process 0: a mixed group and a none-solved one; process 1: all-solved groups."""
    rank = PartialState().process_index
    return [1.0 if rank == 1 else float(i < 2) for i in range(len(completions))]


def main():
    out_dir, model_dir, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    skip, dynamic = mode == "1", mode == "ds"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    args = AsymGRPOConfig(
        **cpu_run_kwargs(),
        output_dir=str(out_dir / "run"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        steps_per_generation=2,
        num_iterations=2,
        num_generations=G,
        max_completion_length=4,
        max_steps=2,
        learning_rate=1e-3,
        optim="sgd",  # step 2's gradients: at weights that differ by float noise x lr only (Adam would amplify it)
        log_diagnostics=dynamic,  # the group shares; off for the skip runs (its Cov(p) window would step aside)
        skip_zero_signal=skip,
        dynamic_sampling=dynamic,
    )
    trainer = AsymGRPOTrainer(model_dir, reward_funcs=rank_reward, args=args, train_dataset=toy_sum_dataset(64))
    gradients = GradientSum()
    trainer.add_callback(gradients)
    trainer.train()
    if PartialState().is_main_process:
        torch.save(gradients.sums, out_dir / f"{mode}.pt")
        logs = [h for h in trainer.state.log_history if "loss" in h]
        (out_dir / f"{mode}.json").write_text(json.dumps({"world_size": world_size, "logs": logs}))


if __name__ == "__main__":
    main()
