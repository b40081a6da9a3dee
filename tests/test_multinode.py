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

from asym_trl.apps.multinode import Rehearsal, compare_resume
from asym_trl.lifecycle.distributed import lost_peer_error

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


# ----------------------------------------------------------------------------- slow: the rehearsal on loopback
@pytest.fixture(scope="module")
def rehearsal(vllm_server, tmp_path_factory):
    from asym_trl.generation.vllm_sync import DiskSyncClient

    url, model_dir, _ = vllm_server  # the session's server: the third node, reached by URL
    yield Rehearsal(tmp_path_factory.mktemp("multinode"), model_dir, url)
    DiskSyncClient(url).reload_weights(model_dir)  # the session's server back at the checkpoint for later tests


@pytest.fixture(scope="module")
def straight(rehearsal):
    """2 nodes x 1 process, 3 steps, a checkpoint at step 2."""
    result = rehearsal.straight()
    assert result["codes"] == [0, 0], "\n".join(log[-4000:] for log in result["logs"])
    print(f"\n[multinode] straight run on 2 nodes: {result['seconds']:.1f} s")
    return result


@pytest.mark.slow
def test_two_nodes_train_as_one_job(straight):
    ranks = straight["records"]
    assert sorted(ranks) == [0, 1]
    for rank, record in ranks.items():
        assert (record["world_size"], record["nodes"], record["node"], record["rank"]) == (2, 2, rank, rank)
        assert record["distributed_type"] == "DistributedType.FSDP"  # FSDP2, not the DDP accelerate falls back to
        assert [s["step"] for s in record["steps"]] == [1, 2, 3] and record["done"]
        # the server's rollouts passed through the disk sync, checked after each of the 3 syncs, the same on both
        assert [h["step"] for h in record["sync_check"]] == [0, 1, 2] and all(h["ok"] for h in record["sync_check"])
    assert ranks[0]["sync_check"] == ranks[1]["sync_check"]
    for a, b in zip(ranks[0]["records"], ranks[1]["records"], strict=True):
        assert a["rewards"] == b["rewards"] and a["step"] == b["step"]  # both hold the gathered rewards
    # each node's own disk: rank 0 wrote the checkpoint (full weights, optimizer, scheduler, trainer state), rank 1
    # only its RNG state
    checkpoint = {"model.safetensors", "optimizer.bin", "scheduler.pt", "trainer_state.json", "rng_state_0.pth"}
    assert checkpoint <= set(straight["written"][0]) and straight["written"][1] == ["rng_state_1.pth"]


@pytest.mark.slow
def test_resume_on_one_node_reproduces_the_next_step(rehearsal, straight):
    """The checkpoint of 2 FSDP2 processes (full state dicts) resumed by 1 process on 1 node: step 3 as the straight
    run trained it."""
    resumed = rehearsal.resume(straight["checkpoint"])
    assert resumed["code"] == 0, resumed["log"][-4000:]
    print(f"\n[multinode] resume on 1 node: {resumed['seconds']:.1f} s")
    record = resumed["records"][0]
    assert (record["world_size"], record["distributed_type"]) == (1, "DistributedType.FSDP")
    assert [r["step"] for r in record["records"]] == [3]  # steps 1-2 came from the checkpoint (and its log history)
    assert record["sync_check"][0]["ok"]  # the server synced to the checkpoint's weights
    step = compare_resume(straight, resumed)
    assert step["same_prompts"] and step["same_rewards"] and step["same_completions"]
    merged, single = step["advantages"]
    assert merged == single and any(merged)  # the 2 processes' advantages are exactly the one process's
    assert step["loss"][1] == pytest.approx(step["loss"][0], rel=1e-5)  # measured 3e-7 apart
    assert step["grad_norm"][1] == pytest.approx(step["grad_norm"][0], rel=1e-5)
    assert step["same_tensors"] and step["max_weight_diff"] < 1e-6  # measured 7e-9


@pytest.mark.slow
def test_losing_a_node_stops_the_other_within_the_bound(rehearsal):
    result = rehearsal.node_loss(lost=1)
    print(f"\n[multinode] node 1 killed: node 0 stopped after {result['stop_seconds']:.1f} s (rc {result['code']})")
    assert result["code"] not in (0, None), result["log"][-4000:]  # stopped by itself, with an error
    assert result["stop_seconds"] < result["bound"]
    assert "LostPeerError" in result["log"] and "lost contact with node 1 (rank 1)" in result["log"]
