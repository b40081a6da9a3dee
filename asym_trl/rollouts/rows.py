"""Row-wise operations on TRL's batch dicts (one row per rollout), shared by the zero-signal skip and dynamic sampling.

A TRL batch maps names to per-row tensors (first dimension = rows), per-row lists, and values that are not per row
(``num_items_in_batch``, a 0-d tensor).  Completion-aligned tensors are right-padded to the batch's longest
completion and prompt tensors left-padded to the longest prompt; :data:`COMPLETION_PADDING` and
:data:`PROMPT_PADDING` name them with their padding values.
"""

from __future__ import annotations

import torch

# Per-row tensors aligned with the completion tokens, and their padding (None: the tokenizer's pad id).
# TRL's importance_sampling_ratio is per token only in its token_* modes; in the sequence modes it is (B, 1).
COMPLETION_PADDING = {
    "completion_ids": None,
    "completion_mask": 0,
    "tool_mask": 0,
    "old_per_token_logps": 0.0,
    "ref_per_token_logps": 0.0,
    "sampling_per_token_logps": 0.0,
    "importance_sampling_ratio": 1.0,
}
# Per-row prompt tensors, left-padded to the batch's longest prompt.
PROMPT_PADDING = {"prompt_ids": None, "prompt_mask": 0}


def is_per_row(value, n: int) -> bool:
    return (isinstance(value, torch.Tensor) and value.dim() > 0 and value.size(0) == n) or (
        isinstance(value, (list, tuple)) and len(value) == n
    )


def select_rows(inputs: dict, index: torch.Tensor | list[int]) -> dict:
    """The batch restricted to the rows ``index`` (in that order): per-row tensors and lists are indexed, the rest
    is kept. ``index`` a host list: no device read (a tensor index is read once, for the per-row lists)."""
    n = len(inputs["advantages"])
    host = [index] if isinstance(index, list) else []

    def pick(value):
        if not is_per_row(value, n):
            return value
        if isinstance(value, torch.Tensor):
            rows = torch.tensor(host[0], device=value.device) if isinstance(index, list) else index.to(value.device)
            return value.index_select(0, rows)
        if not host:
            host.append(index.tolist())
        return [value[i] for i in host[0]]

    return {key: pick(value) for key, value in inputs.items()}


def concat_rows(batches: list[dict]) -> dict:
    """One batch holding the rows of ``batches`` (same keys and column widths, e.g. slices of one generation
    batch) in order; values that are not per row are taken from the first."""
    n = len(batches[0]["advantages"])

    def join(key, value):
        if not is_per_row(value, n):
            return value
        parts = [batch[key] for batch in batches]
        return torch.cat(parts) if isinstance(value, torch.Tensor) else [row for part in parts for row in part]

    return {key: join(key, value) for key, value in batches[0].items()}


def pad_right(x: torch.Tensor, width: int, value) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.size(1)), value=value) if x.size(1) < width else x


def pad_left(x: torch.Tensor, width: int, value) -> torch.Tensor:
    return torch.nn.functional.pad(x, (width - x.size(1), 0), value=value) if x.size(1) < width else x


def trim_completions(inputs: dict, multiple: int | None = None) -> dict:
    """The batch without its trailing completion columns that no row uses (all masked out), its width kept a
    multiple of ``multiple`` (TRL's ``pad_to_multiple_of``: fewer shapes to compile).

    Exact for TRL's loss: the model is causal, so a column after a row's last token changes none of its log-probs,
    and every normaliser counts masked tokens or uses a fixed length (``max_completion_length``).
    """
    mask = inputs["completion_mask"]
    full = mask.size(1)
    used = mask.ne(0).any(dim=0).nonzero()
    width = int(used.max()) + 1 if len(used) else 1
    if multiple:
        width = min(-(-width // multiple) * multiple, full)
    if width == full:
        return inputs

    def trim(key, value):
        aligned = key in COMPLETION_PADDING and isinstance(value, torch.Tensor) and value.dim() == 2
        return value[:, :width] if aligned and value.size(1) == full else value

    return {key: trim(key, value) for key, value in inputs.items()}
