"""Two CPU processes (gloo) compute exactly the advantages of one process, groups split across them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asym_trl import compute_advantages

SCRIPT = Path(__file__).parent / "scripts" / "record_advantages.py"
G, GLOBAL_BATCH = 4, 12  # 3 prompts per step; 6 rollouts per process, so the middle group spans both


def run(out_dir: Path, model: str, estimator: str, nproc: int) -> list[dict]:
    out_dir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, str(SCRIPT), str(out_dir), model, estimator, str(GLOBAL_BATCH)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *cmd[1:]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(nproc)]
    assert all(r["world_size"] == nproc for r in ranks)  # really nproc processes
    return ranks


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["asym", "ent_increase"])
def test_two_processes_match_one(estimator, tiny_model_path, tmp_path):
    single = run(tmp_path / "one", tiny_model_path, estimator, 1)[0]["records"]
    double = run(tmp_path / "two", tiny_model_path, estimator, 2)
    r0, r1 = double[0]["records"], double[1]["records"]
    assert len(single) == len(r0) == len(r1) == 2
    for step, one in enumerate(single):
        a, b = r0[step], r1[step]
        # both processes hold the same globally gathered rewards, equal to the single-process ones
        assert a["rewards"] == b["rewards"] == one["rewards"]
        assert a["local_answers"] + b["local_answers"] == one["local_answers"]
        merged = torch.tensor(a["local_advantages"] + b["local_advantages"])
        assert torch.equal(merged, torch.tensor(one["local_advantages"]))
        expected = compute_advantages(torch.tensor(one["rewards"]), G, estimator)
        assert torch.allclose(merged, expected, atol=1e-6)
        # a group is split across the processes and has mixed outcomes (so the test can tell)
        split_group = torch.tensor(one["rewards"]).view(-1, G)[1]
        assert 0 < split_group.sum() < G
