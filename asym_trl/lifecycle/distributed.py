"""Multi-process and multi-node runs: a bounded wait for a lost peer, and an error that names it.

When a training process dies (its node lost, OOM-killed, preempted), the others find out at their next collective:

- a peer whose process is gone closes its sockets, and gloo (CPU) raises at once ("Connection reset by peer");
- a peer that is frozen or cut off by the network (its sockets stay open) is waited for until the process group's
  timeout, TrainingArguments' ``ddp_timeout`` (default 1800 s). transformers (5.24) hands ``ddp_timeout`` to the
  process group on GPUs only: with ``use_cpu`` the group got torch's default (30 min) whatever the config said.
  :func:`init_cpu_process_group` makes ``ddp_timeout`` the bound on CPU too (``AsymGRPOConfig`` calls it).

:func:`lost_peer_error` turns the backend's error into one that says which process noticed and which peers it had
(per node, from the launcher's environment), so the log of every surviving node names the node that went away.
See docs/distributed.md.
"""

from __future__ import annotations

import os
import re
import socket

__all__ = ["LostPeerError", "init_cpu_process_group", "lost_peer_error", "node_layout"]

# What torch's process-group backends say when a peer stops answering: gloo's transport errors (closed or reset
# connection, a recv/send that timed out) and the NCCL watchdog's timeout.
_LOST_PEER = re.compile(
    r"gloo/transport|Connection (?:reset|closed) by peer|Timed out waiting \d+ms|Broken pipe|"
    r"Watchdog caught collective operation timeout|NCCL communicator was aborted"
)
_PEER_ADDRESS = re.compile(r"\[([0-9a-fA-F.:]+)\]:(\d+)")


class LostPeerError(RuntimeError):
    """A collective failed because another training process died or stopped answering."""


def init_cpu_process_group(use_cpu: bool, backend: str | None, timeout_s: float) -> None:
    """Create the CPU process group of a launched run (``use_cpu`` or accelerate's ``use_cpu: true``) with
    ``timeout_s`` as its timeout.

    Called before transformers sets up devices: accelerate then finds the group initialised and keeps it. A no-op
    outside a launcher (no ``LOCAL_RANK``), off CPU, or when the group exists already.
    """
    import torch.distributed as dist

    use_cpu = use_cpu or os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")
    if not use_cpu or "LOCAL_RANK" not in os.environ or not dist.is_available() or dist.is_initialized():
        return
    from datetime import timedelta

    from accelerate import PartialState

    PartialState(cpu=True, backend=backend, timeout=timedelta(seconds=timeout_s))


def node_layout() -> dict:
    """This process's place in the launch, from torchrun's environment (accelerate launch sets it on every node).

    torchrun numbers ranks node by node, ``LOCAL_WORLD_SIZE`` per node, so every node's ranks follow from it.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return {
        "rank": int(os.environ.get("RANK", "0")),
        "node": int(os.environ.get("GROUP_RANK", "0")),
        "nodes": max(1, world // max(1, per_node)),
        "per_node": per_node,
        "host": socket.gethostname(),
    }


def _ranks(node: int, per_node: int) -> str:
    first, last = node * per_node, (node + 1) * per_node - 1
    return f"rank {first}" if first == last else f"ranks {first}-{last}"


def lost_peer_error(exc: BaseException, timeout_s: float | None = None) -> LostPeerError | None:
    """A :class:`LostPeerError` for ``exc`` when it is a collective failing on a lost peer, else None."""
    text = str(exc)
    if not _LOST_PEER.search(text):
        return None
    me = node_layout()
    others = [n for n in range(me["nodes"]) if n != me["node"]]
    if others:
        peers = ", ".join(f"node {n} ({_ranks(n, me['per_node'])})" for n in others)
        lost = (
            f"lost contact with node {others[0]} ({_ranks(others[0], me['per_node'])})"
            if len(others) == 1
            else (f"lost contact with one of the other nodes: {peers}")
        )
    else:
        lost = "lost contact with another process on this node"
    if (address := _PEER_ADDRESS.search(text)) is not None:
        how = f"the peer at {address.group(1)}:{address.group(2)} closed the connection"
    elif "Timed out" in text or "timeout" in text:
        how = "a peer did not answer" + (f" within ddp_timeout={timeout_s:g} s" if timeout_s else "")
    else:
        how = "the collective failed"
    first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return LostPeerError(
        f"training stopped: rank {me['rank']} (node {me['node']} of {me['nodes']}, host {me['host']}) {lost}: "
        f"{how} ({first_line[:300]}). Every node stops when one is lost; relaunch the job to resume from the last "
        "checkpoint in output_dir (docs/distributed.md)."
    )
