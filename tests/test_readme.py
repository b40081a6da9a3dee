"""README's Python examples run as pasted (on CPU, offline): each ```python block in a fresh interpreter, in an empty
directory, so the README cannot drift from the API."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_python_examples():
    assert BLOCKS and "AsymGRPOTrainer" in BLOCKS[0]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_each_python_block_runs_as_pasted(index, tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKS[index]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    if index == 0:  # the trainer example: a trained model saved where it says, and a learning signal logged
        run = tmp_path / "runs" / "readme"
        assert (run / "model.safetensors").is_file() and (run / "tokenizer.json").is_file()
        history = json.loads((run / "trainer_state.json").read_text())["log_history"]
        rewards = [h["reward"] for h in history if "reward" in h]
        assert rewards and 0 < rewards[0] < 1  # the warm start is partly right: groups carry signal
