"""Dynamic sampling (DAPO's "filter groups"), the smallest version that fits TRL's batch layout.

A generation batch's groups whose rollouts all have advantage 0 carry no gradient.  With ``dynamic_sampling``, the
batch's prompts are generated and scored again (whole batch, up to ``dynamic_sampling_max_generations`` in all)
and each zero-signal group is replaced, in place, by the first informative group of the same prompt.  Unlike DAPO,
no new prompts are drawn (TRL's dataloader hands the trainer one generation batch of prompts at a time), so a prompt
the policy always solves stays zero-signal; the cap bounds the cost.

Every generation is scored and logged as usual, so the group shares (``groups/all_solved``...) count the groups
that were dropped; ``dynamic_sampling/generations`` is the number of generations the batch took and
``dynamic_sampling/informative_groups`` the share of its groups that carry gradient.  Each process must hold whole
groups (``per_device_train_batch_size x steps_per_generation`` divisible by ``num_generations``); the decisions use
the gathered advantages, so every process generates the same number of times.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .trl_compat import metrics, pad_token_id

# Per-row tensors aligned with the completion tokens (right-padded to the batch's longest completion), their padding.
# TRL's importance_sampling_ratio is per token only in its token_* modes; in the sequence modes it is (B, 1).
COMPLETION_PADDING = {
    "completion_ids": None,  # the tokenizer's pad id
    "completion_mask": 0,
    "tool_mask": 0,
    "old_per_token_logps": 0.0,
    "ref_per_token_logps": 0.0,
    "sampling_per_token_logps": 0.0,
    "importance_sampling_ratio": 1.0,
}


def informative_groups(advantages: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(num_groups,)``: whether any rollout of the group has a non-zero advantage."""
    return advantages.view(-1, group_size).ne(0).any(dim=1)


def pad_right(x: torch.Tensor, width: int, value) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.size(1)), value=value) if x.size(1) < width else x


def merge_rows(base: dict, new: dict, take: torch.Tensor, pad_id: int, per_token_ratio: bool = True) -> dict:
    """``base`` with the rows ``take`` from ``new`` (same prompts); completion-aligned tensors padded to one width
    (``importance_sampling_ratio`` only when ``per_token_ratio``: a per-sequence ratio stays one column)."""
    out = dict(base)
    width = max(base["completion_ids"].size(1), new["completion_ids"].size(1))
    for key, value in base.items():
        if not (isinstance(value, torch.Tensor) and value.dim() > 0 and value.size(0) == len(take)):
            continue
        other = new[key]
        if key in COMPLETION_PADDING and (key != "importance_sampling_ratio" or per_token_ratio):
            pad = pad_id if COMPLETION_PADDING[key] is None else COMPLETION_PADDING[key]
            value, other = pad_right(value, width, pad), pad_right(other, width, pad)
        mask = take.view(-1, *([1] * (value.dim() - 1))).to(value.device)
        out[key] = torch.where(mask, other.to(value.dtype), value)
    return out


class DynamicSampler:
    """Regenerates a training batch's zero-signal groups from the same prompts (see the module doc)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.latest = None  # global (advantages, success, valid) of the last scored generation

    def observe(self, advantages: torch.Tensor, success: torch.Tensor, valid: torch.Tensor) -> None:
        self.latest = (advantages, success, valid)

    def generate(self, inputs: list, generate_fn: Callable[[list], dict]) -> dict:
        trainer = self.trainer
        if not trainer.model.training:
            return generate_fn(inputs)
        size, cap = trainer.num_generations, trainer.args.dynamic_sampling_max_generations
        output = generate_fn(inputs)
        merged = self.latest
        filled = informative_groups(merged[0], size)
        generations = 1
        while not filled.all() and generations < cap:
            new = generate_fn(inputs)
            generations += 1
            take = ~filled & informative_groups(self.latest[0], size)
            rows = take.repeat_interleave(size)
            local = rows.view(trainer.accelerator.num_processes, -1)[trainer.accelerator.process_index]
            per_token = trainer.args.vllm_importance_sampling_mode.startswith("token")
            output = merge_rows(output, new, local, pad_token_id(trainer), per_token_ratio=per_token)
            merged = tuple(torch.where(rows, b, a) for a, b in zip(merged, self.latest, strict=True))
            filled |= take
        mask = output["completion_mask"] * output.get("tool_mask", 1)
        output["num_items_in_batch"] = trainer.accelerator.gather(mask.sum()).sum()  # as TRL counts it
        logged = metrics(trainer, "train")
        logged["dynamic_sampling/generations"].append(float(generations))
        logged["dynamic_sampling/informative_groups"].append(filled.float().mean().item())
        if trainer.diagnostics is not None:
            trainer.diagnostics.replace_batch("train", *merged)
        return output
