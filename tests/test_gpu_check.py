"""The GPU check (scripts/gpu_check.sh -> benchmarks/gpu_check.py) runs on CPU with --tiny, so it cannot rot."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "gpu_check.sh"


def gpu_check(out_dir: Path, *options: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(out_dir), "--tiny", *options], env=env, capture_output=True, text=True, timeout=300
    )
    return proc, json.loads((out_dir / "results.json").read_text())["sections"]


def test_tiny_run_reports_both_trainers_and_the_benchmark(tmp_path):
    proc, sections = gpu_check(tmp_path, "--sections", "advantages,full,lora,deepspeed,async")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert list(sections) == ["env", "advantages", "full", "lora", "deepspeed", "async"]
    assert sections["async"] == {"skipped": "--tiny"}  # it needs a vLLM server on the GPU
    assert sections["env"]["tiny"] is True
    assert set(sections["advantages"]["ms"]) >= {"TRL grpo", "asym", "ent_increase", "pass_at_k"}
    assert all(ms > 0 for ms in sections["advantages"]["ms"].values())
    for name in ("full", "lora"):
        run = sections[name]
        assert "error" not in run and run["warm_up_s"] > 0
        assert len(run["pairs"]) == 3  # ABBA: AsymGRPO first in pairs 0 and 2
        for pair in run["pairs"]:
            trl, asym = pair["trl"], pair["asym"]
            assert len(trl["step_times_s"]) == len(asym["step_times_s"]) == 5
            # same data and seed: both trainers saw the same planted groups, a mix with and without signal, and
            # AsymGRPO's own all-/none-solved count agrees with TRL's zero-std share
            assert 0 < trl["zero_signal_share"] == asym["zero_signal_share"] < 1
            assert asym["all_or_none_solved"] == pytest.approx(asym["zero_signal_share"])
        ratios = [p["asym"]["step_time_s"] / p["trl"]["step_time_s"] for p in run["pairs"]]
        assert run["pair_ratios"] == pytest.approx(ratios) and run["ratio_spread"] == [min(ratios), max(ratios)]
        assert run["step_time_ratio"] == pytest.approx(sorted(ratios)[1])
    parts = sections["full"]["parts"]
    assert parts["asym"]["rescore"] > 0 and parts["trl"]["rescore"] == 0 and parts["asym"]["diagnostics"] > 0
    syncs = sections["full"]["syncs"]
    assert syncs["trl"]["host_reads"].get("asym_trl", 0) == 0 < syncs["asym"]["host_reads"]["asym_trl"] <= 6
    assert syncs["asym"]["cuda_syncs"] is None  # CUDA only
    assert "parts" not in sections["lora"]
    lora, full = sections["lora"]["pairs"][0]["asym"], sections["full"]["pairs"][0]["asym"]
    assert lora["parameters"] == full["parameters"]  # the base model
    if importlib.util.find_spec("deepspeed") is None:  # as here: the section says so, and fails nothing
        assert sections["deepspeed"] == {"skipped": "deepspeed not importable"}
    else:
        for run in sections["deepspeed"]["stages"].values():
            assert "error" not in run and run["synced_full_shapes"] is True, run
    table = (tmp_path / "results.md").read_text()
    assert "| full | 3 |" in table and "| lora | 3 |" in table and "| asym |" in table and "| rescore |" in table
    assert "[gpu_check" in (tmp_path / "log.txt").read_text()


def test_a_failing_section_keeps_the_others(tmp_path):
    # generation refuses 0 new tokens
    proc, sections = gpu_check(tmp_path, "--completion-length", "0", "--sections", "advantages,full,lora,deepspeed")
    assert proc.returncode == 1
    assert "ms" in sections["advantages"] and "error" not in sections["advantages"]
    assert "max_new_tokens" in sections["full"]["error"] and "max_new_tokens" in sections["lora"]["error"]
    assert "deepspeed" in sections  # reached after the failures
    assert "error:" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_tiny_multinode_section_launches_two_nodes(tmp_path):
    """The rehearsal's first phase as the GPU check runs it, on CPU: 2 nodes x 1 process, FSDP2, a checkpoint written
    by rank 0 (on a GPU the section also resumes on one node and kills a node: tests/test_multinode.py on CPU)."""
    proc, sections = gpu_check(tmp_path, "--sections", "multinode")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert sections["multinode"]["ranks"] == "CPU tensors over gloo, float32 (no GPU)"
    straight = sections["multinode"]["straight"]
    assert straight["exit_codes"] == [0, 0] and straight["world_sizes"] == [2, 2]
    assert straight["distributed_type"] == "DistributedType.FSDP" and len(straight["losses"]) == 3
    assert "optimizer.bin" in straight["checkpoint_files"]["0"] and straight["checkpoint_files"]["1"] == [
        "rng_state_1.pth"
    ]
    assert "Two nodes on loopback" in (tmp_path / "results.md").read_text()
