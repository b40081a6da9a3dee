"""The Slurm script run on this machine with stand-ins for srun, scontrol, curl, accelerate and asym-trl
(tests/scripts/fake_slurm.py): which command runs on which node with which Slurm variables, checked for behaviour
(not text), so that a typo in it cannot reach a cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "slurm" / "asymgrpo_vllm_server.sbatch"
FAKE = Path(__file__).parent / "scripts" / "fake_slurm.py"
TOOLS = ("srun", "scontrol", "curl", "accelerate", "asym-trl")


def sbatch(tmp_path: Path, nodes: str = "gpu01 gpu02 gpu03", dry_run: bool = False, **env) -> tuple:
    """Run the script as `sbatch` would on an allocation of ``nodes``; the calls the stand-ins saw, in order."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in TOOLS:
        wrapper = bin_dir / tool
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" {tool} "$@"\n')
        wrapper.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    run_env = base | {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "SLURM_JOB_ID": "42",
        "SLURM_JOB_NODELIST": "gpu[01-03]",
        "FAKE_NODES": nodes,
        "FAKE_SLURM_LOG": str(log),
        "FAKE_DRY_RUN": "1" if dry_run else "0",
        **env,
    }
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=600)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def of(calls: list[dict], tool: str) -> list[dict]:
    return [c for c in calls if c["tool"] == tool]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_server_on_the_last_node_training_on_the_others(tmp_path):
    proc, calls = sbatch(tmp_path, dry_run=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # the server: one task, on the last node of the allocation, the recipe's model, NCCL sync by default
    (server,) = of(calls, "asym-trl")
    assert server["node"] == "gpu03" and server["env"]["SLURM_NTASKS"] == "1"
    assert server["argv"][:2] == ["vllm-serve", "Qwen/Qwen3-4B"] and option(server["argv"], "--weight-sync") == "nccl"
    assert server["dry_run"]["returncode"] == 0, server["dry_run"]["output"]  # asym-trl vllm-serve accepts it
    assert "--tensor-parallel-size 1" in server["dry_run"]["output"]

    # training starts only once the server answered, at its node and port
    (health,) = of(calls, "curl")
    assert health["argv"][-1] == "http://gpu03:8000/health"
    assert calls.index(health) < calls.index(of(calls, "accelerate")[0])

    # one accelerate launcher per training node, never on the server node; node rank = Slurm task id
    launches = of(calls, "accelerate")
    assert [c["node"] for c in launches] == ["gpu01", "gpu02"]
    for c in launches:
        launch = c["launch"]
        assert launch["machine_rank"] == int(c["env"]["SLURM_PROCID"]) == launches.index(c)
        assert (launch["num_machines"], launch["num_processes"]) == (2, 16)  # accelerate's num_processes: all nodes
        assert launch["main_process_ip"] == "gpu01" and launch["main_process_port"] == 29500
        assert (launch["module"], launch["script"]) == (True, "asym_trl.train")
        args = c["script_args"]
        assert option(args, "--vllm_server_host") == "gpu03" and option(args, "--vllm_server_port") == "8000"
        per_device, accumulation = (
            int(option(args, "--per_device_train_batch_size")),
            int(option(args, "--gradient_accumulation_steps")),
        )
        assert per_device * accumulation * 16 == 512  # the recipe's optimizer batch
    assert launches[0]["script_args"] == launches[1]["script_args"]
    (train_step,) = [c for c in of(calls, "srun") if c["step_nodes"] == ["gpu01", "gpu02"]]
    assert train_step["ntasks"] == 2 and not any(
        "kill-on-bad-exit" in a for a in train_step["argv"]
    )  # graceful stops exit 75

    # the training command as rank 0 runs it, with --dry-run: every recipe key known, the batch arithmetic
    dry_run = launches[0]["dry_run"]
    assert dry_run["returncode"] == 0, dry_run["output"][-3000:]
    assert "batch arithmetic for 16 training process(es)" in dry_run["output"]
    assert "completions per optimizer step: 512" in dry_run["output"]
    assert "vllm_server_host: gpu03" in dry_run["output"]


def test_disk_sync_and_a_larger_allocation(tmp_path):
    nodes = "n1 n2 n3 n4 n5"
    proc, calls = sbatch(tmp_path, nodes, WEIGHT_SYNC="disk", SYNC_DIR="/shared/run1/w", GPUS_PER_NODE="4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (server,) = of(calls, "asym-trl")
    assert server["node"] == "n5" and option(server["argv"], "--weight-sync") == "disk"
    launches = of(calls, "accelerate")
    assert [c["node"] for c in launches] == ["n1", "n2", "n3", "n4"]
    assert [c["launch"]["machine_rank"] for c in launches] == [0, 1, 2, 3]
    assert {(c["launch"]["num_machines"], c["launch"]["num_processes"]) for c in launches} == {(4, 16)}
    args = launches[0]["script_args"]
    assert option(args, "--vllm_weight_sync") == "disk" and option(args, "--vllm_weight_sync_dir") == "/shared/run1/w"


@pytest.mark.parametrize(
    ("nodes", "env", "message"),
    [
        ("gpu01", {}, "need >= 2 nodes"),
        ("gpu01 gpu02 gpu03", {"OPTIMIZER_BATCH": "500"}, "OPTIMIZER_BATCH=500 is not a multiple"),
        ("gpu01 gpu02 gpu03", {"WEIGHT_SYNC": "disk"}, "WEIGHT_SYNC=disk needs SYNC_DIR"),
        ("gpu01 gpu02 gpu03", {"FAKE_CURL_OK": "0"}, "vLLM server exited"),  # the stand-in server exits at once
    ],
)
def test_refusals_start_no_training(tmp_path, nodes, env, message):
    proc, calls = sbatch(tmp_path, nodes, **env)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-2000:]
    assert not of(calls, "accelerate")
