"""FSDP2 on 2 CPU processes (gloo), checked against DDP and against one process.

The FSDP run uses recipes/accelerate_configs/fsdp.yaml with only its device keys changed for CPU. accelerate runs FSDP
only on accelerators (on CPU it trains plain DDP without a word), so the trainer of tests/scripts/record_fsdp.py
switches its state to FSDP (asym_trl.apps.multinode_node.FSDPOnCPU): accelerate's own FSDP2 preparation and TRL's FSDP2
code paths then run as on GPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from asym_trl.apps.multinode import cpu_fsdp_config

ROOT = Path(__file__).parents[1]
SCRIPT = Path(__file__).parent / "scripts" / "record_fsdp.py"
CONFIGS = ROOT / "recipes" / "accelerate_configs"
# FSDP vs DDP, first step, measured: loss identical, grad-norm 1.5e-7 apart (relative); weights after 2 steps 1.2e-7.
LOSS_RTOL, GRAD_NORM_RTOL, WEIGHTS_ATOL = 1e-6, 1e-5, 1e-5


def launch(out_dir: Path, model: str, accelerate_config: Path | None) -> list[dict]:
    out_dir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(SCRIPT), str(out_dir), model]
    if accelerate_config is not None:
        cmd[1:1] = ["-m", "accelerate.commands.launch", "--config_file", str(accelerate_config)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    world_size = 1 if accelerate_config is None else 2
    ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world_size)]
    assert all(r["world_size"] == world_size for r in ranks)
    return ranks


@pytest.mark.slow
def test_fsdp2_shards_and_matches_ddp(tiny_model_path, tmp_path):
    from transformers import AutoModelForCausalLM

    one = launch(tmp_path / "one", tiny_model_path, None)[0]
    ddp = launch(tmp_path / "ddp", tiny_model_path, CONFIGS / "cpu_multi.yaml")
    fsdp = launch(tmp_path / "fsdp", tiny_model_path, cpu_fsdp_config(tmp_path / "fsdp_cpu.yaml"))

    # really FSDP2: every parameter is a DTensor sharded on dim 0, each process holding a part; DDP holds full copies
    assert fsdp[0]["distributed_type"] == "DistributedType.FSDP"
    assert ddp[0]["distributed_type"] == "DistributedType.MULTI_CPU"
    for name, p in fsdp[0]["params"].items():
        assert (p["type"], p["placements"]) == ("DTensor", ["S(0)"]), name
        assert p["local_shape"][0] < p["shape"][0] and p["local_shape"][1:] == p["shape"][1:], name
        assert ddp[0]["params"][name]["local_shape"] == p["shape"], name

    # advantages: the two processes' slices put together are exactly the single process's
    for step, single in enumerate(one["records"]):
        a, b = fsdp[0]["records"][step], fsdp[1]["records"][step]
        assert a["rewards"] == b["rewards"] == single["rewards"]
        assert a["local_advantages"] + b["local_advantages"] == single["local_advantages"]

    # the first step against DDP (same per-process sampling, so the same rollouts)
    assert fsdp[0]["loss"] == pytest.approx(ddp[0]["loss"], rel=LOSS_RTOL)
    assert fsdp[0]["grad_norm"] == pytest.approx(ddp[0]["grad_norm"], rel=GRAD_NORM_RTOL)

    # the disk weight sync writes full, unsharded tensors under the model's own names: the processes' pieces put
    # together, the same weights DDP trained, and no longer the initial ones
    synced = load_file(str(tmp_path / "fsdp" / "sync" / "model.safetensors"))
    pieces = [load_file(str(tmp_path / "fsdp" / f"pieces{r}.safetensors")) for r in range(2)]
    ddp_synced = load_file(str(tmp_path / "ddp" / "sync" / "model.safetensors"))
    initial = dict(AutoModelForCausalLM.from_pretrained(tiny_model_path).named_parameters())
    assert sorted(synced) == sorted(initial)
    for name, tensor in synced.items():
        assert tensor.shape == initial[name].shape, name
        assert torch.equal(tensor, torch.cat([pieces[0][name], pieces[1][name]])), name
        assert torch.allclose(tensor, ddp_synced[name], rtol=0, atol=WEIGHTS_ATOL), name
        assert not torch.equal(tensor, initial[name].detach()), name
    # the library's sync check ran on every process (a collective forward of the sharded model) and found the served
    # copy of the synced file equal to the sharded model, to float32 precision
    for rank in fsdp:
        (check,) = rank["sync_check"]
        assert check["ok"] and check["gap"] < 1e-4, check
