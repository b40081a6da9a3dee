"""Dynamic sampling (DAPO's "filter groups") within TRL's batch layout.

A generation batch's groups whose rollouts all have advantage 0 carry no gradient.  With ``dynamic_sampling``, while
such groups remain, a whole generation batch is generated and scored again (up to
``dynamic_sampling_max_generations`` generations in all) and its informative groups take the zero-signal groups'
places (slots), in place:

* ``dynamic_sampling_prompts="new"`` (DAPO): from prompts drawn from the training set (without replacement while
  a draw is smaller than it), by a generator seeded from ``args.seed`` (the same draws on every process; not
  checkpointed).  Each process fills its open
  slots, in order, with its own new informative groups;
* ``"same"``: from the batch's own prompts; a slot takes an informative group of its own prompt.

Every generation is scored and logged as usual, so the group shares (``groups/all_solved``...) count the groups
that were dropped; ``dynamic_sampling/generations`` is the number of generations the batch took and
``dynamic_sampling/informative_groups`` the share of its groups that carry gradient.  Each process must hold whole
groups (``per_device_train_batch_size x steps_per_generation`` divisible by ``num_generations``); the decisions use
the gathered advantages, so every process generates the same number of times.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..trl_compat import MODEL_INPUT_KEYS, metrics, pad_token_id
from .rows import COMPLETION_PADDING, PROMPT_PADDING, is_per_row, pad_left, pad_right, select_rows

# Kept from the slot, whatever fills it: the diagnostics index the merged batch's state by slot position.
SLOT_KEYS = ("rollout_index",)
# Offset of the prompt-drawing generator's seed from args.seed (TRL's sampler draws from args.seed itself).
PROMPT_SEED_OFFSET = 7919


def informative_groups(advantages: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(num_groups,)``: whether any rollout of the group has a non-zero advantage."""
    return advantages.view(-1, group_size).ne(0).any(dim=1)


def merge_rows(base: dict, new: dict, take: torch.Tensor, pad_id: int, per_token_ratio: bool = True) -> dict:
    """``base`` with the rows ``take`` from ``new`` (at the same positions): completion-aligned tensors right-padded
    and prompt tensors left-padded to common widths (``importance_sampling_ratio`` only when ``per_token_ratio``: a
    per-sequence ratio stays one column); :data:`SLOT_KEYS` stay ``base``'s."""
    out = dict(base)
    for key, value in base.items():
        if not (isinstance(value, torch.Tensor) and is_per_row(value, len(take))) or key in SLOT_KEYS:
            continue
        other = new[key]
        if value.dim() == 2 and value.size(1) != other.size(1):
            width = max(value.size(1), other.size(1))
            if key in PROMPT_PADDING:
                pad = pad_id if PROMPT_PADDING[key] is None else PROMPT_PADDING[key]
                value, other = pad_left(value, width, pad), pad_left(other, width, pad)
            elif key in COMPLETION_PADDING and (key != "importance_sampling_ratio" or per_token_ratio):
                pad = pad_id if COMPLETION_PADDING[key] is None else COMPLETION_PADDING[key]
                value, other = pad_right(value, width, pad), pad_right(other, width, pad)
        mask = take.view(-1, *([1] * (value.dim() - 1))).to(value.device)
        out[key] = torch.where(mask, other.to(value.dtype), value)
    return out


def check_text_only(batch: dict) -> None:
    """Dynamic sampling merges rows of text batches only: image inputs (``pixel_values``, ``num_images``...) are not
    per row, and token-type ids span prompt and completion."""
    present = [key for key in MODEL_INPUT_KEYS if batch.get(key) is not None]
    if present:
        raise ValueError(
            f"dynamic_sampling does not support multimodal batches (this one has {present}); "
            "set dynamic_sampling=False"
        )


def fill_slots(open_slots: torch.Tensor, available: torch.Tensor, num_processes: int, same_prompt: bool):
    """``(num_groups,)``: for each open slot that gets one, the group of the new generation that fills it; -1 for the
    others.  Same prompt: the slot's own group, when informative.  New prompts: each process's open slots, in
    order, take its informative new groups, in order (groups never move between processes)."""
    source = torch.full(open_slots.shape, -1, dtype=torch.long, device=open_slots.device)
    if same_prompt:
        take = open_slots & available
        source[take] = take.nonzero().squeeze(1)
        return source
    per_process = len(open_slots) // num_processes
    for start in range(0, len(open_slots), per_process):
        slots = start + open_slots[start : start + per_process].nonzero().squeeze(1)
        pool = start + available[start : start + per_process].nonzero().squeeze(1)
        n = min(len(slots), len(pool))
        source[slots[:n]] = pool[:n]
    return source


class DynamicSampler:
    """Replaces a training batch's zero-signal groups by informative ones, generated again (see the module doc)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.latest = None  # global (advantages, success, valid) of the last scored generation
        self.same_prompt = trainer.args.dynamic_sampling_prompts == "same"
        if not self.same_prompt and trainer.train_dataset is not None:
            self.prompt_pool()  # fail early
        # Not checkpointed: a resumed run draws other new prompts than an uninterrupted one would.
        self.generator = torch.Generator().manual_seed(trainer.args.seed + PROMPT_SEED_OFFSET)

    def prompt_pool(self):
        """The training set new prompts are drawn from (read when drawing: it may be set after construction)."""
        dataset = self.trainer.train_dataset
        if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset) or len(dataset) == 0:
            raise ValueError(
                "dynamic_sampling_prompts='new' draws prompts from the training set, which must be a non-empty "
                f"map-style dataset (got {type(dataset).__name__}); use dynamic_sampling_prompts='same'"
            )
        return dataset

    def observe(self, advantages: torch.Tensor, success: torch.Tensor, valid: torch.Tensor) -> None:
        self.latest = (advantages, success, valid)

    def new_prompts(self, num_rows: int) -> list:
        """This process's ``num_rows`` rows of new prompts (each repeated ``num_generations`` times); every process
        draws the same global sample and takes its slice."""
        accelerator, size, prompts = self.trainer.accelerator, self.trainer.num_generations, self.prompt_pool()
        count = num_rows // size * accelerator.num_processes
        rounds = -(-count // len(prompts))  # a draw larger than the training set repeats it, reshuffled
        drawn = torch.cat([torch.randperm(len(prompts), generator=self.generator) for _ in range(rounds)])
        mine = drawn[:count].view(accelerator.num_processes, -1)[accelerator.process_index]
        return [prompts[int(i)] for i in mine for _ in range(size)]

    def generate(self, inputs: list, generate_fn: Callable[[list], dict]) -> dict:
        trainer = self.trainer
        if not trainer.model.training:
            return generate_fn(inputs)
        size, cap = trainer.num_generations, trainer.args.dynamic_sampling_max_generations
        num_processes, rank = trainer.accelerator.num_processes, trainer.accelerator.process_index
        per_token = trainer.args.vllm_importance_sampling_mode.startswith("token")
        output = generate_fn(inputs)
        check_text_only(output)
        merged = self.latest
        filled = informative_groups(merged[0], size)
        generations = 1
        while not filled.all() and generations < cap:
            new = generate_fn(inputs if self.same_prompt else self.new_prompts(len(inputs)))
            generations += 1
            source = fill_slots(~filled, informative_groups(self.latest[0], size), num_processes, self.same_prompt)
            taken = source >= 0
            rows = taken.repeat_interleave(size)
            offsets = torch.arange(size, device=source.device)
            sources = (source.clamp(min=0).unsqueeze(1) * size + offsets).view(-1)  # global row filling each row
            sources = torch.where(rows, sources, torch.arange(len(rows), device=rows.device))
            local_rows = rows.view(num_processes, -1)[rank]
            local_sources = sources.view(num_processes, -1)[rank] - rank * len(local_rows)
            new = select_rows(new, local_sources)
            output = merge_rows(output, new, local_rows, pad_token_id(trainer), per_token_ratio=per_token)
            merged = tuple(torch.where(rows, b[sources], a) for a, b in zip(merged, self.latest, strict=True))
            filled |= taken
        mask = output["completion_mask"] * output.get("tool_mask", 1)
        output["num_items_in_batch"] = trainer.accelerator.gather(mask.sum()).sum()  # as TRL counts it
        logged = metrics(trainer, "train")
        logged["dynamic_sampling/generations"].append(float(generations))
        logged["dynamic_sampling/informative_groups"].append(filled.float().mean().item())
        if trainer.diagnostics is not None:
            trainer.diagnostics.replace_batch("train", *merged)
        return output
