"""One training node of the multi-node rehearsal (:mod:`asym_trl.apps.multinode`): the reward, the trainer that records
every generation batch, and the worker that ``accelerate launch`` runs on each node.

FSDP2 on CPU processes needs :class:`FSDPOnCPU` (accelerate honours FSDP only on accelerators); the reward depends only
on a rollout's prompt and position, so runs on any number of processes see the same rewards.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from transformers import TrainerCallback

from ..config import AsymGRPOConfig
from ..lifecycle.distributed import node_layout
from ..trainer import AsymGRPOTrainer
from .tiny import cpu_run_kwargs, toy_sum_dataset

G = 4  # rollouts per prompt
GLOBAL_BATCH = 12  # rollouts per step: 3 groups, so under 2 processes the middle group spans both
LEARNING_RATE = 1e-3


def position_reward(completions, answer, **kwargs) -> list[float]:
    """Depends only on the prompt and the rollout's position in its group, not on the sampled text, so runs on any
    number of processes see the same rewards; about half of the rollouts succeed, and most groups are mixed."""
    start = PartialState().process_index * len(completions)
    return [float(hashlib.sha256(f"{a}/{(start + i) % G}".encode()).digest()[0] % 2) for i, a in enumerate(answer)]


class FSDPOnCPU:
    """Trainer mixin: FSDP2 on CPU processes (gloo).

    accelerate (1.15) honours FSDP only on accelerators: on CPU, an FSDP launch config with ``use_cpu: true`` trains
    plain DDP (``MULTI_CPU``) without a word. Here the state is switched to FSDP once the Accelerator is built, so
    that accelerate's own FSDP2 preparation (``fully_shard`` per transformer block), its FSDP checkpoint code and
    TRL's FSDP2 code paths run on gloo. A no-op where accelerate already runs FSDP (GPUs).
    """

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        state = self.accelerator.state
        if state.distributed_type == DistributedType.MULTI_CPU and os.environ.get("ACCELERATE_USE_FSDP") == "true":
            # AcceleratorState() copies PartialState's fields on every call: switch both
            PartialState().distributed_type = state.distributed_type = DistributedType.FSDP
            state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* variables
            self.is_fsdp_enabled = True


class RehearsalTrainer(FSDPOnCPU, AsymGRPOTrainer):
    """Records every generation batch (the gathered rewards; this process's advantages, prompts' answers and
    completions) and writes them, with the logged steps and the sync checks, to ``record_path`` after every step."""

    def __init__(self, *args, record_path: Path, **kwargs):
        self.records, self.record_path = [], Path(record_path)
        super().__init__(*args, **kwargs)
        self.add_callback(WriteRecord(self))

    def rescore(self, output, inputs, rewards_per_func):
        output = super().rescore(output, inputs, rewards_per_func)
        ids, mask = output["completion_ids"], output["completion_mask"].bool()
        self.records.append(
            {
                "step": self.state.global_step + 1,
                "rewards": rewards_per_func[:, 0].tolist(),
                "advantages": output["advantages"].tolist(),
                "answers": [x["answer"] for x in inputs],
                "completions": [row[keep].tolist() for row, keep in zip(ids, mask, strict=True)],
            }
        )
        return output

    def write_record(self, **extra):
        generation = getattr(self, "vllm_generation", None)
        record = {
            **node_layout(),
            "world_size": self.accelerator.num_processes,
            "distributed_type": str(self.accelerator.distributed_type),
            "steps": [h for h in self.state.log_history if "loss" in h],
            "records": self.records,
            "sync_check": generation.sync_check.history if generation is not None else [],
            **extra,
        }
        tmp = self.record_path.with_suffix(".partial")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.record_path)


class WriteRecord(TrainerCallback):
    def __init__(self, trainer: RehearsalTrainer):
        self.trainer = trainer

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.trainer.write_record()


def worker(opts) -> None:
    """One training process of a rehearsal node (under ``accelerate launch``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = opts.device == "cuda"
    if opts.server_url:
        generation = dict(
            use_vllm=True,
            vllm_mode="server",
            vllm_server_base_url=opts.server_url,
            vllm_server_timeout=60,
            vllm_weight_sync="disk",
            vllm_weight_sync_dir=opts.sync_dir,
            generation_kwargs={"seed": 0},  # the server samples the same completions from the same weights
        )
    else:
        generation = dict(generation_kwargs={"do_sample": False})  # greedy transformers generation, per process
    args = AsymGRPOConfig(
        **cpu_run_kwargs(
            use_cpu=not cuda,
            bf16=cuda,
            save_strategy="steps" if opts.save_steps else "no",
            save_steps=opts.save_steps or 500,
        ),
        output_dir="run",  # relative: the node's own disk
        per_device_train_batch_size=GLOBAL_BATCH // world,
        num_generations=G,
        max_completion_length=8,
        max_steps=opts.max_steps,
        learning_rate=LEARNING_RATE,
        ddp_timeout=opts.ddp_timeout,
        ddp_backend=opts.ddp_backend,
        **generation,
    )
    record_path = Path(opts.record_dir) / f"rank{int(os.environ.get('RANK', '0'))}.json"
    trainer = RehearsalTrainer(
        opts.model, reward_funcs=position_reward, args=args, train_dataset=toy_sum_dataset(64), record_path=record_path
    )
    trainer.write_record()
    trainer.train(resume_from_checkpoint=opts.resume)
    trainer.save_model("run")  # under FSDP every process gathers; rank 0 writes the full weights
    trainer.write_record(done=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
