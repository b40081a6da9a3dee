"""Past one machine: the bounded stop on a lost peer, and the multi-node launch rehearsed on loopback.

The rehearsal (slow) is asym_trl/apps/multinode.py's: two `accelerate launch` "nodes" of one process each (FSDP2 over
gloo) and the session's vLLM CPU server as a third node, with the disk weight sync and its check.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from asym_trl.distributed import lost_peer_error

ROOT = Path(__file__).parents[1]
RESET = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:21919: "
    "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application."
)
TIMEOUT = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:129] Timed out waiting 30000ms for "
    "send operation to complete"
)


def launched(monkeypatch, rank: int, node: int, world: int, per_node: int) -> None:
    """torchrun's variables for ``rank`` on ``node``."""
    env = {"RANK": rank, "GROUP_RANK": node, "WORLD_SIZE": world, "LOCAL_WORLD_SIZE": per_node}
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))


def test_lost_peer_error_names_the_node(monkeypatch):
    launched(monkeypatch, rank=0, node=0, world=2, per_node=1)
    message = str(lost_peer_error(RuntimeError(RESET), 30))
    assert "rank 0 (node 0 of 2, host" in message and "lost contact with node 1 (rank 1)" in message
    assert "the peer at 127.0.0.1:21919 closed the connection" in message and "relaunch the job" in message

    launched(monkeypatch, rank=3, node=1, world=4, per_node=2)  # a frozen peer: the wait ends at ddp_timeout
    message = str(lost_peer_error(RuntimeError(TIMEOUT), 30))
    assert "rank 3 (node 1 of 2" in message and "lost contact with node 0 (ranks 0-1)" in message
    assert "did not answer within ddp_timeout=30 s" in message

    launched(monkeypatch, rank=1, node=1, world=3, per_node=1)  # more nodes: the candidates
    assert "one of the other nodes: node 0 (rank 0), node 2 (rank 2)" in str(lost_peer_error(RuntimeError(RESET)))

    assert lost_peer_error(RuntimeError("CUDA out of memory")) is None
    assert lost_peer_error(ValueError("generation_batch_size must be divisible")) is None


def test_ddp_timeout_bounds_the_cpu_process_group(tmp_path):
    """transformers hands ddp_timeout to the process group on GPUs only; AsymGRPOConfig makes it the CPU group's
    timeout too (the wait for a frozen peer). One process, as a launcher would start it."""
    code = f"""
import torch, torch.distributed as dist
from accelerate.state import AcceleratorState
from trl import GRPOConfig
from asym_trl import AsymGRPOConfig

def timeout():
    backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
    return backend.options._timeout.total_seconds()

kwargs = dict(output_dir={str(tmp_path)!r}, use_cpu=True, ddp_timeout=7, report_to="none")
GRPOConfig(**kwargs)
print("grpo", timeout())
dist.destroy_process_group()
AcceleratorState._reset_state(reset_partial_state=True)
AsymGRPOConfig(**kwargs)
print("asym", timeout())
"""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env |= {"MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["grpo", "1800.0", "asym", "7.0"]  # TRL's config keeps torch's 30 min
