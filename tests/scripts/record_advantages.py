"""Run 2 AsymGRPO steps and dump, per process, the gathered rewards and this process's advantages.

Launched by tests/test_distributed.py with 1 process and with 2 (torchrun, gloo on CPU); record_fsdp.py builds on it.
Usage: record_advantages.py OUT_DIR MODEL_DIR ESTIMATOR GLOBAL_BATCH
"""

import json
import os
import sys
from pathlib import Path

from accelerate import PartialState

from asym_trl import AsymGRPOConfig, AsymGRPOTrainer
from asym_trl.apps.multinode_node import G, position_reward
from asym_trl.apps.tiny import cpu_run_kwargs, toy_sum_dataset


class Recording(AsymGRPOTrainer):
    records = []

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        self.records.append(
            {
                "rewards": self._gathered_rewards_per_func[:, 0].tolist(),
                "local_advantages": out["advantages"].tolist(),
                "local_answers": [x["answer"] for x in inputs],
            }
        )
        return out


def build_trainer(out_dir, model_dir, estimator, global_batch, trainer_cls=Recording) -> Recording:
    """The trainer both scripts run: ``global_batch`` rollouts per step split over the processes, 2 steps."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    args = AsymGRPOConfig(
        **cpu_run_kwargs(),
        output_dir=str(Path(out_dir) / "run"),
        advantage_estimator=estimator,
        per_device_train_batch_size=global_batch // world_size,
        num_generations=G,
        max_completion_length=4,
        max_steps=2,
        learning_rate=1e-3,
    )
    return trainer_cls(model_dir, reward_funcs=position_reward, args=args, train_dataset=toy_sum_dataset(64))


def write_rank_json(out_dir, **record) -> None:
    state = PartialState()
    path = Path(out_dir) / f"rank{state.process_index}.json"
    path.write_text(json.dumps({"world_size": state.num_processes, **record}))


def main():
    out_dir, model_dir, estimator, global_batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    trainer = build_trainer(out_dir, model_dir, estimator, global_batch)
    trainer.train()
    write_rank_json(out_dir, records=trainer.records)


if __name__ == "__main__":
    main()
