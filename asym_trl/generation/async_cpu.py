"""What TRL 1.16's ``AsyncGRPOTrainer`` needs to train on a machine without CUDA: its packed attention in torch SDPA.

TRL packs each micro-batch into one row per process, a prefix trie of its samples (``packing.TreeRow``), and runs
attention through an attention function it registers as ``"tree_fa3"``: FlashAttention-3's varlen kernel, fetched
with the ``kernels`` package (a Hopper GPU and a Hub download). :func:`sdpa_tree_attention` computes the same thing
with ``torch.nn.functional.scaled_dot_product_attention``: every trie segment attends to the keys of its root-to-
segment path (gathered by ``tree_kv_index``), causally, with its queries aligned to the end of those keys (the varlen
kernel's ``causal=True`` when a segment has fewer queries than keys). One SDPA call per segment: fine for the small
models a CPU trains, not meant for speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from trl.experimental.async_grpo.packing import TREE_ATTENTION

__all__ = ["sdpa_tree_attention", "use_sdpa_tree_attention"]


def sdpa_tree_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    *,
    tree_kv_index,
    tree_cu_seqlens_q,
    tree_cu_seqlens_k,
    tree_max_seqlen_q=None,
    tree_max_seqlen_k=None,
    scaling=None,
    sliding_window=None,
    softcap=None,
    **kwargs,
):
    """TRL's ``packing.tree_attention`` (same arguments, same ``(1, N, heads, head_dim)`` output) without FA3."""
    if sliding_window or softcap:
        raise NotImplementedError("the CPU tree attention has no sliding window or logit soft-capping")
    q, k, v = query[0], key[0].index_select(1, tree_kv_index), value[0].index_select(1, tree_kv_index)
    if k.shape[0] != q.shape[0]:  # grouped-query attention: one key head serves several query heads
        k, v = (x.repeat_interleave(q.shape[0] // x.shape[0], dim=0) for x in (k, v))
    cu_q, cu_k = tree_cu_seqlens_q.tolist(), tree_cu_seqlens_k.tolist()
    out = []
    for q0, q1, k0, k1 in zip(cu_q[:-1], cu_q[1:], cu_k[:-1], cu_k[1:], strict=True):
        # query i of the segment sits at key position (k1 - k0) - (q1 - q0) + i: it sees keys up to there
        offset = (k1 - k0) - (q1 - q0)
        mask = (
            torch.arange(k1 - k0, device=q.device)[None, :] <= torch.arange(q1 - q0, device=q.device)[:, None] + offset
        )
        out.append(
            F.scaled_dot_product_attention(q[:, q0:q1], k[:, k0:k1], v[:, k0:k1], attn_mask=mask, scale=scaling)
        )
    return torch.cat(out, dim=1).transpose(0, 1).unsqueeze(0), None


def use_sdpa_tree_attention() -> None:
    """Serve TRL's ``"tree_fa3"`` attention with :func:`sdpa_tree_attention` from now on (process-wide)."""
    AttentionInterface.register(TREE_ATTENTION, sdpa_tree_attention)
